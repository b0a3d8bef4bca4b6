"""SCAN from its grammar: the 20,910 commands, known pairs, the standard splits, tokenisation.

The tests marked by the ``scan_dir`` fixture compare with the real SCAN files and skip cleanly when they
are absent (``$SPECTRAL_EDGE_SCAN_DIR`` or ``../shared/data/scan`` beside the repository).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from spectral_edge_studies.tasks import scan
from spectral_edge_studies.tasks.scan import (
    BOS_ID,
    EOS_ID,
    IGNORE_INDEX,
    INPUT_VOCAB,
    OUTPUT_VOCAB,
    PAD_ID,
    SCAN_SPLITS,
    decode_actions,
    decode_command,
    encode_scan,
    find_scan_dir,
    interpret,
    load_scan_split,
    read_scan_file,
    scan_commands,
    scan_split,
    scan_subset,
)

# From the SCAN README and paper (LTURN = I_TURN_LEFT, ...), and the task brief.
KNOWN_PAIRS = {
    "jump": "I_JUMP",
    "jump left": "I_TURN_LEFT I_JUMP",
    "jump around right": "I_TURN_RIGHT I_JUMP I_TURN_RIGHT I_JUMP I_TURN_RIGHT I_JUMP I_TURN_RIGHT I_JUMP",
    "turn left twice": "I_TURN_LEFT I_TURN_LEFT",
    "jump thrice": "I_JUMP I_JUMP I_JUMP",
    "jump opposite left and walk thrice": "I_TURN_LEFT I_TURN_LEFT I_JUMP I_WALK I_WALK I_WALK",
    "jump opposite left after walk around left": (
        "I_TURN_LEFT I_WALK I_TURN_LEFT I_WALK I_TURN_LEFT I_WALK I_TURN_LEFT I_WALK I_TURN_LEFT I_TURN_LEFT I_JUMP"
    ),
    "jump twice after walk left": "I_TURN_LEFT I_WALK I_JUMP I_JUMP",
    "turn opposite right": "I_TURN_RIGHT I_TURN_RIGHT",
    "turn around left thrice": " ".join(["I_TURN_LEFT"] * 12),
    "look right and run opposite left twice": "I_TURN_RIGHT I_LOOK I_TURN_LEFT I_TURN_LEFT I_RUN I_TURN_LEFT I_TURN_LEFT I_RUN",
    "run after run left": "I_TURN_LEFT I_RUN I_RUN",  # a line of the real add-primitive training file
}

# Number of commands per action-sequence length, counted in the real tasks.txt (no command has 23).
LENGTH_HISTOGRAM = {
    1: 6, 2: 88, 3: 398, 4: 860, 5: 1184, 6: 1178, 7: 1104, 8: 1450, 9: 1256, 10: 1696, 11: 1072, 12: 1578,
    13: 432, 14: 848, 15: 688, 16: 304, 17: 512, 18: 784, 19: 448, 20: 464, 21: 64, 22: 576, 24: 336,
    25: 448, 26: 512, 27: 448, 28: 448, 30: 576, 32: 448, 33: 256, 36: 64, 40: 256, 48: 128,
}  # fmt: skip

# (train lines, test lines) of each split; the first three checked against the real files, the
# turn-left and template sizes against the original repository (and recomputed from its rules).
SPLIT_SIZES = {
    "simple": (16_728, 4_182),
    "length": (16_990, 3_920),
    "addprim_jump": (14_670, 7_706),
    "addprim_turn_left": (21_890, 1_208),
    "template_around_right": (15_225, 4_476),
    "template_jump_around_right": (18_528, 1_173),
    "template_opposite_right": (15_225, 4_476),
    "template_right": (15_225, 4_476),
}


@pytest.fixture(scope="module")
def scan_dir() -> Path:
    folder = find_scan_dir()
    if folder is None or not (folder / "tasks.txt").is_file():
        pytest.skip(
            "SCAN reference files not found: set SPECTRAL_EDGE_SCAN_DIR or put them in ../shared/data/scan"
        )
    return folder


# --- grammar ---------------------------------------------------------------------------------------


def test_all_commands_are_distinct_and_counted() -> None:
    pairs = scan_commands()
    commands = [c for c, _ in pairs]
    assert len(pairs) == scan.N_COMMANDS == 20_910
    assert len(set(commands)) == 20_910
    assert max(len(c.split(" ")) for c in commands) == scan.MAX_COMMAND_WORDS
    assert max(len(a.split(" ")) for _, a in pairs) == scan.MAX_ACTIONS
    assert {w for c in commands for w in c.split(" ")} == set(scan.COMMAND_WORDS)
    assert {t for _, a in pairs for t in a.split(" ")} == set(scan.ACTIONS)


def test_action_length_histogram_matches_the_real_data() -> None:
    assert Counter(len(a.split(" ")) for _, a in scan_commands()) == LENGTH_HISTOGRAM


@pytest.mark.parametrize(("command", "actions"), sorted(KNOWN_PAIRS.items()))
def test_known_pairs(command: str, actions: str) -> None:
    assert interpret(command) == actions
    assert dict(scan_commands())[command] == actions


def test_conjunctions_compose_their_halves() -> None:
    singles = {c: a for c, a in scan_commands() if " and " not in c and " after " not in c}
    assert len(singles) == 102
    for command, actions in scan_commands()[102::97]:
        for conj in (" and ", " after "):
            if conj in command:
                first, second = command.split(conj)
                parts = (
                    (singles[first], singles[second])
                    if conj == " and "
                    else (singles[second], singles[first])
                )
                assert actions == " ".join(parts)


@pytest.mark.parametrize(
    "command",
    [
        "",
        "turn",
        "fly",
        "jump sideways",
        "walk left left",
        "jump twice twice",
        "jump and",
        "jump  left",
        "twice",
    ],
)
def test_interpret_rejects_non_commands(command: str) -> None:
    with pytest.raises(ValueError, match="not a SCAN command"):
        interpret(command)


def test_scan_commands_is_cached_and_immutable() -> None:
    assert scan_commands() is scan_commands()
    assert isinstance(scan_commands(), tuple)


# --- splits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCAN_SPLITS))
def test_split_sizes_and_disjointness(name: str) -> None:
    split = scan_split(name)
    assert (len(split.train), len(split.test)) == SPLIT_SIZES[name]
    assert split.source == "grammar" and split.name == name
    train, test = set(split.train), set(split.test)
    assert not train & test
    assert len(test) == len(split.test)  # no repeats in test
    assert train | test <= set(scan_commands())


def test_length_split_cuts_at_22_actions() -> None:
    split = scan_split("length")
    assert max(len(a.split(" ")) for _, a in split.train) == 22
    assert min(len(a.split(" ")) for _, a in split.test) == 24
    assert len(set(split.train)) + len(split.test) == 20_910


@pytest.mark.parametrize(
    ("name", "primitive", "copies"),
    [("addprim_jump", "jump", 1467), ("addprim_turn_left", "turn left", 2189)],
)
def test_add_primitive_splits(name: str, primitive: str, copies: int) -> None:
    split = scan_split(name)
    counts = Counter(split.train)
    bare = (primitive, interpret(primitive))
    assert counts[bare] == copies and copies * 10 == len(split.train)  # exactly 10% of train
    assert all(n == 1 for pair, n in counts.items() if pair != bare)
    assert len(counts) + len(split.test) == 20_910  # every command once, on one side
    if primitive == "jump":
        assert all("jump" not in c.split(" ") for c, _ in counts if c != "jump")
        assert all("jump" in c.split(" ") for c, _ in split.test)
    else:
        assert ("turn opposite left", "I_TURN_LEFT I_TURN_LEFT") in counts  # a different phrase
        assert all("turn left" in c for c, _ in split.test)


@pytest.mark.parametrize(
    ("name", "held", "turn_form"),
    [
        ("template_right", ["walk right", "look right", "run right", "jump right"], "turn right"),
        ("template_opposite_right", [f"{x} opposite right" for x in scan.PRIMITIVES], "turn opposite right"),
        ("template_around_right", [f"{x} around right" for x in scan.PRIMITIVES], "turn around right"),
        ("template_jump_around_right", ["jump around right"], "turn around right"),
    ],
)
def test_template_splits_hold_out_the_template(name: str, held: list[str], turn_form: str) -> None:
    split = scan_split(name)

    def phrases(command: str) -> set[str]:
        parts = command.replace(" after ", " and ").split(" and ")
        return {p.removesuffix(" twice").removesuffix(" thrice") for p in parts}

    assert all(not phrases(c) & {*held, turn_form} for c, _ in split.train)
    assert all(phrases(c) & set(held) and turn_form not in phrases(c) for c, _ in split.test)
    dropped = 20_910 - len(split.train) - len(split.test)
    assert dropped == sum(turn_form in phrases(c) for c, _ in scan_commands())


def test_simple_split_is_seeded() -> None:
    first, again, other = (
        scan_split("simple", seed=3),
        scan_split("simple", seed=3),
        scan_split("simple", seed=4),
    )
    assert first == again
    assert set(first.train) != set(other.train)
    assert set(first.train) | set(first.test) == set(scan_commands())


def test_split_ignores_the_global_rng() -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = scan_split("simple", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(99)
    assert scan_split("simple", seed=1) == first


def test_unknown_split_raises() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        scan_split("mcd1")


# --- the paper's subset ----------------------------------------------------------------------------


def test_paper_subset_of_the_simple_split() -> None:
    simple = scan_split("simple", seed=0)
    sub = scan_subset(simple, seed=0)
    assert (len(sub.train), len(sub.test)) == (2048, 500)
    assert set(sub.train) <= set(simple.train) and set(sub.test) <= set(simple.test)
    assert len(set(sub.train)) == 2048
    assert scan_subset(simple, seed=0) == sub
    assert scan_subset(simple, seed=1).train != sub.train
    assert len(scan_subset(simple, n_train=10, n_test=None).test) == 4182


def test_author_protocol_replays_the_authors_draw() -> None:
    simple = scan_split("simple", seed=0)
    sub = scan_subset(simple, n_train=64, n_test=32, seed=0, protocol="author")
    order = list(range(len(simple.train)))
    random.Random(0).shuffle(order)
    assert sub.train == tuple(simple.train[i] for i in order[:64])
    test_order = torch.randperm(len(simple.test), generator=torch.Generator().manual_seed(0))[:32].tolist()
    assert sub.test == tuple(simple.test[i] for i in test_order)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_train": 0}, "n_train must be"),
        ({"n_test": 10**6}, "n_test must be"),
        ({"protocol": "x"}, "protocol"),
    ],
)
def test_subset_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        scan_subset(scan_split("length"), **kwargs)


# --- tokenisation ----------------------------------------------------------------------------------


def test_vocabularies() -> None:
    assert len(INPUT_VOCAB) == 14 and INPUT_VOCAB[PAD_ID] == "<pad>"
    assert len(OUTPUT_VOCAB) == 9
    assert (OUTPUT_VOCAB[PAD_ID], OUTPUT_VOCAB[BOS_ID], OUTPUT_VOCAB[EOS_ID]) == ("<pad>", "<bos>", "<eos>")


def test_round_trip_over_every_command() -> None:
    pairs = scan_commands()
    tensors = encode_scan(pairs)
    n = len(pairs)
    assert tensors.src.shape == (n, 9) and tensors.tgt_in.shape == tensors.tgt_out.shape == (n, 49)
    assert tensors.src.dtype == tensors.tgt_in.dtype == tensors.tgt_out.dtype == torch.int64
    assert (tensors.tgt_in[:, 0] == BOS_ID).all()
    assert ((tensors.tgt_out == EOS_ID).sum(dim=1) == 1).all()
    lengths = torch.tensor([len(a.split(" ")) for _, a in pairs])
    assert torch.equal((tensors.tgt_out == EOS_ID).int().argmax(dim=1), lengths)
    # teacher forcing: the target is the input shifted by one
    is_action = (tensors.tgt_out != IGNORE_INDEX) & (tensors.tgt_out != EOS_ID)
    assert not is_action[:, -1].any()
    shifted = is_action[:, :-1]
    assert torch.equal(tensors.tgt_in[:, 1:][shifted], tensors.tgt_out[:, :-1][shifted])
    assert torch.equal(tensors.src_padding_mask, tensors.src == PAD_ID)
    for row in range(0, n, 7):
        command, actions = pairs[row]
        assert decode_command(tensors.src[row]) == command
        assert decode_actions(tensors.tgt_in[row]) == actions
        assert decode_actions(tensors.tgt_out[row]) == actions


def test_decode_stops_at_end_of_sequence() -> None:
    ids = [OUTPUT_VOCAB.index("I_JUMP"), OUTPUT_VOCAB.index("I_WALK"), EOS_ID, OUTPUT_VOCAB.index("I_RUN")]
    assert decode_actions(ids) == "I_JUMP I_WALK"
    with pytest.raises(ValueError, match="action id"):
        decode_actions([BOS_ID, BOS_ID])
    with pytest.raises(ValueError, match="input id"):
        decode_command([99])


@pytest.mark.parametrize(
    ("pairs", "kwargs", "match"),
    [
        ([("fly", "I_JUMP")], {}, "not a word"),
        ([("jump", "I_FLY")], {}, "not an action"),
        ([("jump twice", "I_JUMP I_JUMP")], {"tgt_len": 2}, "tgt_len >= 3"),
        ([("jump twice", "I_JUMP I_JUMP")], {"src_len": 1}, "src_len >= 2"),
    ],
)
def test_encode_rejects_bad_pairs(pairs: list, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_scan(pairs, **kwargs)


# --- files -------------------------------------------------------------------------------------------


def test_load_and_find_with_the_repository_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "length_split").mkdir()
    (tmp_path / "length_split" / "tasks_train_length.txt").write_text("IN: walk OUT: I_WALK\n\n")
    (tmp_path / "tasks_test_length.txt").write_text("IN: jump twice OUT: I_JUMP I_JUMP\n")
    monkeypatch.setenv("SPECTRAL_EDGE_SCAN_DIR", str(tmp_path))
    assert find_scan_dir() == tmp_path
    split = load_scan_split("length")
    assert split.train == (("walk", "I_WALK"),) and split.test == (("jump twice", "I_JUMP I_JUMP"),)
    assert split.source == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="tasks_train_simple.txt"):
        load_scan_split("simple")
    (tmp_path / "bad.txt").write_text("IN: walk\n")
    with pytest.raises(ValueError, match=r"bad.txt:1"):
        read_scan_file(tmp_path / "bad.txt")


def test_generator_reproduces_tasks_txt(scan_dir: Path) -> None:
    real = read_scan_file(scan_dir / "tasks.txt")
    assert len(real) == 20_910
    # The file's line order is a random permutation (no sort key), so compare as multisets.
    assert Counter(real) == Counter(scan_commands())
    for command, actions in real[::50]:
        assert interpret(command) == actions


@pytest.mark.parametrize(
    "name",
    ["length", "addprim_jump", "addprim_turn_left", *sorted(n for n in SCAN_SPLITS if "template" in n)],
)
def test_deterministic_splits_match_the_files(scan_dir: Path, name: str) -> None:
    try:
        real = load_scan_split(name, scan_dir)
    except FileNotFoundError as err:
        pytest.skip(f"no files for {name}: {err}")
    generated = scan_split(name)
    assert Counter(real.train) == Counter(generated.train)  # duplicates included
    assert Counter(real.test) == Counter(generated.test)


def test_simple_split_files_partition_the_commands(scan_dir: Path) -> None:
    try:
        real = load_scan_split("simple", scan_dir)
    except FileNotFoundError as err:
        pytest.skip(f"no files for the simple split: {err}")
    assert (len(real.train), len(real.test)) == SPLIT_SIZES["simple"]
    assert not set(real.train) & set(real.test)
    assert set(real.train) | set(real.test) == set(scan_commands())
    assert len(scan_subset(real, protocol="author").train) == 2048
