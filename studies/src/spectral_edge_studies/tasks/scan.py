"""SCAN, generated from its grammar (Lake & Baroni, ICML 2018), and its standard splits (thesis §27).

The thesis trains a 3 + 3 layer encoder–decoder on a 2,048-example subset of SCAN's *simple* split
(Table 6; formulas.md §14). Nothing here needs the SCAN files: the whole data set is the language of a
small grammar, written out below with its interpretation function.

Grammar (Lake & Baroni 2018, Fig. 6), with ``U`` the primitives and ``D`` a direction::

    C → S and S | S after S | S
    S → V twice | V thrice | V
    V → D[1] opposite D[2] | D[1] around D[2] | D | U
    D → U left | U right | turn left | turn right
    U → walk | look | run | jump

Interpretation (Fig. 7): ``walk → I_WALK`` (likewise look, run, jump); ``turn left → I_TURN_LEFT``;
``x left → I_TURN_LEFT x``; ``x opposite left → I_TURN_LEFT I_TURN_LEFT x``; ``x around left →
(I_TURN_LEFT x) × 4``; with ``x = turn`` the primitive action is empty, so ``turn opposite left`` is two
left turns and ``turn around left`` four; ``s twice → s s``; ``s thrice → s s s``; ``c1 and c2 → c1
c2``; ``c1 after c2 → c2 c1``. There are 34 ``V`` phrases, 102 ``S`` and ``102 + 2·102² = 20,910``
commands, all distinct, with action sequences of 1–48 actions (no command has 23).

Splits (:data:`SCAN_SPLITS`). Definitions from the README of the original repository
(github.com/brendenlake/SCAN) and Loula, Baroni & Lake (2018, "Rearranging the familiar") for the
template splits; how each was checked is said per split.

* ``simple``: random 80/20 (16,728 / 4,182). The original permutation is unknown, so
  :func:`scan_split` draws a seeded one; :func:`load_scan_split` reads the real files when present.
* ``length``: train on action sequences of ≤ 22 actions (16,990), test on the rest, which have 24–48
  (3,920). Equal, as multisets, to ``tasks_{train,test}_length.txt`` (tested when the files are there).
* ``addprim_jump``: train on every command without the word ``jump`` (13,203) plus the bare command
  ``jump`` repeated to make 10% of the training set (1,467 copies, 14,670 lines, as in the file); test
  on every other command with ``jump`` (7,706). Equal, as multisets with repeats, to
  ``tasks_{train,test}_addprim_jump.txt`` (tested when the files are there).
* ``addprim_turn_left``: the same with the phrase ``turn left`` (``turn opposite left`` and ``turn
  around left`` do not contain it): 19,701 + 2,189 copies = 21,890 / 1,208. Checked once against the
  repository's files by size in bytes (3,974,537 and 173,679), which these sets reproduce exactly.
* ``template_*``: a held-out template ``X right``, ``X opposite right`` or ``X around right`` for every
  primitive ``X``, or only ``jump around right``. Train holds the commands without the template for
  any ``X`` *including* ``turn``; test holds those with the template for a primitive ``X`` and without
  its ``turn`` form; commands with the ``turn`` form are in neither. Sizes: 15,225 / 4,476 for
  ``right``, ``opposite_right`` and ``around_right``; 18,528 / 1,173 for ``jump_around_right``. This
  rule reproduces the byte sizes of the repository's ``template_right`` (3,173,282 / 729,823) and
  ``template_opposite_right`` (2,990,057 / 871,363) files exactly, and the first lines of
  ``template_right`` in order; ``around_right`` and ``jump_around_right`` (no files seen) follow by the same rule.

Line order. ``tasks.txt`` lists its lines in a random order (checked: no correlation with grammar
order, length or neighbours), and the simple, length and add-primitive files in other random orders;
the template files keep ``tasks.txt``'s order. So the generator is compared with the files as
multisets. This module returns the commands in a fixed grammar order (:func:`scan_commands`) and the
deterministic splits in that order, the repeated primitive last; shuffle when batching.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

#: A SCAN example: ``(command, actions)``, both space-separated, as in the files' ``IN: … OUT: …``.
ScanPair = tuple[str, str]

PRIMITIVES = ("walk", "look", "run", "jump")
DIRECTIONS = ("left", "right")
#: Output actions, in the files' spelling.
ACTIONS = ("I_WALK", "I_LOOK", "I_RUN", "I_JUMP", "I_TURN_LEFT", "I_TURN_RIGHT")
#: The 13 words of the command language.
COMMAND_WORDS = (*PRIMITIVES, "turn", *DIRECTIONS, "opposite", "around", "twice", "thrice", "and", "after")

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
#: Encoder vocabulary: id 0 is padding, then the command words.
INPUT_VOCAB = ("<pad>", *COMMAND_WORDS)
#: Decoder vocabulary: padding, begin- and end-of-sequence, then the actions.
OUTPUT_VOCAB = ("<pad>", "<bos>", "<eos>", *ACTIONS)
#: Target id of padding positions in ``tgt_out``; the default ``ignore_index`` of ``F.cross_entropy``.
IGNORE_INDEX = -100
#: Longest command (words) and longest action sequence in SCAN.
MAX_COMMAND_WORDS = 9
MAX_ACTIONS = 48
N_COMMANDS = 20_910

#: Split name → one-line definition (see the module docstring for sizes and sources).
SCAN_SPLITS = {
    "simple": "random 80/20 split of all commands (seeded here; the original permutation is unknown)",
    "length": "train: action sequences of <= 22 actions; test: the longer ones (24-48)",
    "addprim_jump": "train: commands without 'jump' + 'jump' alone as 10% of train; test: other 'jump' commands",
    "addprim_turn_left": "train: commands without 'turn left' + 'turn left' alone as 10%; test: the rest",
    "template_around_right": "held out: 'X around right' (X a primitive); 'turn around right' dropped",
    "template_jump_around_right": "held out: 'jump around right'; 'turn around right' dropped",
    "template_opposite_right": "held out: 'X opposite right' (X a primitive); 'turn opposite right' dropped",
    "template_right": "held out: 'X right' (X a primitive); 'turn right' dropped",
}

# Held-out V phrases of each template split, and the `turn` form that is left out of both sides.
_TEMPLATES = {
    "template_around_right": ([f"{x} around right" for x in PRIMITIVES], "turn around right"),
    "template_jump_around_right": (["jump around right"], "turn around right"),
    "template_opposite_right": ([f"{x} opposite right" for x in PRIMITIVES], "turn opposite right"),
    "template_right": ([f"{x} right" for x in PRIMITIVES], "turn right"),
}
_ADDPRIM = {"addprim_jump": "jump", "addprim_turn_left": "turn left"}
# File-name stem and folder in the original repository of each split.
_FILES = {
    "simple": ("simple", "simple_split"),
    "length": ("length", "length_split"),
    "addprim_jump": ("addprim_jump", "add_prim_split"),
    "addprim_turn_left": ("addprim_turn_left", "add_prim_split"),
    **{name: (name, "template_split") for name in _TEMPLATES},
}
_SIMPLE_TRAIN_FRACTION = 0.8
_LENGTH_CUTOFF = 22
_PRIMITIVE_SHARE = 0.1  # the bare primitive's share of an add-primitive training set
_ACTION_OF = {"walk": "I_WALK", "look": "I_LOOK", "run": "I_RUN", "jump": "I_JUMP", "turn": None}
_TURN = {"left": "I_TURN_LEFT", "right": "I_TURN_RIGHT"}
_REPEATS = {"twice": 2, "thrice": 3}
_CONJUNCTIONS = (" and ", " after ")


def _interpret_v(words: list[str], phrase: str) -> list[str]:
    verb, *rest = words
    if verb not in _ACTION_OF:
        raise ValueError(
            f"not a SCAN command: {phrase!r} starts with {verb!r}, expected one of {PRIMITIVES} or 'turn'"
        )
    act = [] if _ACTION_OF[verb] is None else [_ACTION_OF[verb]]
    if not rest:
        if verb == "turn":
            raise ValueError(f"not a SCAN command: {phrase!r}; 'turn' needs a direction, e.g. 'turn left'")
        return act
    *modifier, direction = rest
    if direction not in _TURN or modifier not in ([], ["opposite"], ["around"]):
        raise ValueError(
            f"not a SCAN command: {phrase!r}; expected '<verb> [opposite|around] left|right' after the verb"
        )
    turn = [_TURN[direction]]
    if not modifier:
        return turn + act
    if modifier == ["opposite"]:
        return turn + turn + act
    return (turn + act) * 4  # around


def _interpret_s(phrase: str) -> list[str]:
    words = phrase.split(" ")
    if not phrase or "" in words:
        raise ValueError(f"not a SCAN command: {phrase!r} (empty phrase or repeated spaces)")
    times = _REPEATS.get(words[-1], 1)
    if times > 1:
        words = words[:-1]
    if not words:
        raise ValueError(f"not a SCAN command: {phrase!r} has a repeat word but nothing to repeat")
    return _interpret_v(words, phrase) * times


def interpret(command: str) -> str:
    """The action sequence of one SCAN command: the interpretation function of Lake & Baroni (2018).

    Args:
        command: words separated by single spaces, e.g. ``"jump twice after walk left"``.

    Returns:
        The actions, separated by single spaces.

    Raises:
        ValueError: if ``command`` is not in the SCAN language.

    Example:
        >>> interpret("jump twice after walk left")
        'I_TURN_LEFT I_WALK I_JUMP I_JUMP'
        >>> interpret("turn around right")
        'I_TURN_RIGHT I_TURN_RIGHT I_TURN_RIGHT I_TURN_RIGHT'
    """
    if not isinstance(command, str):
        raise ValueError(f"command must be a str, got {type(command).__name__}")
    for conjunction in _CONJUNCTIONS:
        first, found, second = command.partition(conjunction)
        if found:
            left, right = _interpret_s(first), _interpret_s(second)
            return " ".join(left + right if conjunction == " and " else right + left)
    return " ".join(_interpret_s(command))


def _v_phrases() -> list[str]:
    phrases = []
    for verb in (*PRIMITIVES, "turn"):
        if verb != "turn":
            phrases.append(verb)
        for direction in DIRECTIONS:
            phrases += [f"{verb} {direction}", f"{verb} opposite {direction}", f"{verb} around {direction}"]
    return phrases


def _phrases_of(command: str) -> set[str]:
    """The ``V`` phrases a command is made of (``"walk left twice and jump"`` → walk left, jump)."""
    parts = [command]
    for conjunction in _CONJUNCTIONS:
        if conjunction in command:
            parts = command.split(conjunction)
    return {part.removesuffix(" twice").removesuffix(" thrice") for part in parts}


def _uses(command: str, primitive: str) -> bool:
    """Whether a command uses an add-primitive split's primitive.

    ``jump`` is a verb: every phrase built on it counts (``jump around left``). ``turn left`` is a whole
    ``V`` phrase: ``turn opposite left`` and ``turn around left`` do not contain it (the published
    ``addprim_turn_left`` test set has exactly the 1,208 commands with the phrase itself).
    """
    if " " not in primitive:
        return primitive in command.split(" ")
    return primitive in _phrases_of(command)


@functools.lru_cache(maxsize=1)
def scan_commands() -> tuple[ScanPair, ...]:
    """Every SCAN command with its actions: 20,910 pairs in a fixed grammar order.

    The order: the 102 single phrases ``S`` (each ``V`` bare, twice, thrice), then every ``S1 and S2``,
    then every ``S1 after S2``. The result is cached; it is a tuple, so it cannot be changed in place.

    Example:
        >>> pairs = scan_commands()
        >>> len(pairs), pairs[0]
        (20910, ('walk', 'I_WALK'))
        >>> dict(pairs)["jump opposite left after walk around left"].count("I_TURN_LEFT")
        6
    """
    singles = [f"{v}{suffix}" for v in _v_phrases() for suffix in ("", " twice", " thrice")]
    commands = singles + [f"{a}{c}{b}" for c in _CONJUNCTIONS for a in singles for b in singles]
    return tuple((command, interpret(command)) for command in commands)


@dataclass(frozen=True)
class ScanSplit:
    """A train/test split of SCAN: tuples of ``(command, actions)`` pairs.

    ``train`` may repeat a pair (the add-primitive splits repeat the bare primitive); ``test`` never does.
    """

    name: str  # the split's name (a key of SCAN_SPLITS, or a description for a subset)
    train: tuple[ScanPair, ...]  # training pairs
    test: tuple[ScanPair, ...]  # test pairs
    source: str  # "grammar" when generated here, else the folder the files were read from


def _check_split_name(name: str) -> None:
    if name not in SCAN_SPLITS:
        raise ValueError(f"split must be one of {sorted(SCAN_SPLITS)}, got {name!r}")


def scan_split(name: str, *, seed: int = 0) -> ScanSplit:
    """Generate one of SCAN's standard splits from the grammar (definitions in the module docstring).

    Every split but ``simple`` is fully determined by its definition and equals the published files as
    a multiset. ``simple`` is a random 80/20 split of all commands, drawn with a ``torch.Generator``
    seeded with ``seed`` (the published split came from an unknown permutation).

    Args:
        name: one of :data:`SCAN_SPLITS`.
        seed: seed of the ``simple`` split's permutation; ignored by the other splits.

    Returns:
        The split, with ``source="grammar"``.

    Raises:
        ValueError: on an unknown split name.

    Example:
        >>> split = scan_split("addprim_jump")
        >>> len(split.train), len(split.test), split.train.count(("jump", "I_JUMP"))
        (14670, 7706, 1467)
        >>> [len(s.train) for s in (scan_split("simple", seed=0), scan_split("length"))]
        [16728, 16990]
    """
    _check_split_name(name)
    pairs = scan_commands()
    if name == "simple":
        n_train = round(_SIMPLE_TRAIN_FRACTION * len(pairs))
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
        train, test = [pairs[i] for i in order[:n_train]], [pairs[i] for i in order[n_train:]]
    elif name == "length":
        train = [p for p in pairs if len(p[1].split(" ")) <= _LENGTH_CUTOFF]
        test = [p for p in pairs if len(p[1].split(" ")) > _LENGTH_CUTOFF]
    elif name in _ADDPRIM:
        primitive = _ADDPRIM[name]
        others = [p for p in pairs if not _uses(p[0], primitive)]
        test = [p for p in pairs if _uses(p[0], primitive) and p[0] != primitive]
        # Copies so that the primitive is exactly 10% of train: 13,203 / 9 = 1,467 for jump.
        copies = round(len(others) * _PRIMITIVE_SHARE / (1 - _PRIMITIVE_SHARE))
        train = others + [(primitive, interpret(primitive))] * copies
    else:
        held, turn_form = _TEMPLATES[name]
        held_set = set(held)
        train, test = [], []
        for pair in pairs:
            phrases = _phrases_of(pair[0])
            if turn_form in phrases:
                continue
            (test if phrases & held_set else train).append(pair)
    return ScanSplit(name=name, train=tuple(train), test=tuple(test), source="grammar")


def read_scan_file(path: str | os.PathLike[str]) -> tuple[ScanPair, ...]:
    """Read a SCAN data file (``IN: <command> OUT: <actions>`` per line) into pairs, in file order.

    Raises:
        ValueError: on a line not in that format, with its number.
    """
    pairs = []
    with open(path, encoding="ascii") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            command, found, actions = line.removeprefix("IN: ").partition(" OUT: ")
            if not line.startswith("IN: ") or not found:
                raise ValueError(
                    f"{path}:{number}: expected 'IN: <command> OUT: <actions>', got {line[:80]!r}"
                )
            pairs.append((command, actions))
    return tuple(pairs)


def find_scan_dir() -> Path | None:
    """The folder with the real SCAN files, or ``None``.

    Looks at ``$SPECTRAL_EDGE_SCAN_DIR`` first, then at ``../shared/data/scan`` beside the repository
    root (a source checkout). Only a folder that exists counts.
    """
    env = os.environ.get("SPECTRAL_EDGE_SCAN_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[4].parent / "shared" / "data" / "scan")
    return next((path for path in candidates if path.is_dir()), None)


def load_scan_split(name: str, directory: str | os.PathLike[str] | None = None) -> ScanSplit:
    """Read one of the published SCAN splits from its files ``tasks_{train,test}_<name>.txt``.

    The files may lie directly in ``directory`` or in the original repository's sub-folders
    (``simple_split/``, ``length_split/``, ``add_prim_split/``, ``template_split/``).

    Args:
        name: one of :data:`SCAN_SPLITS`.
        directory: the folder; by default :func:`find_scan_dir`.

    Returns:
        The split in file order, with ``source`` set to the folder.

    Raises:
        ValueError: on an unknown split name.
        FileNotFoundError: if no folder is given or found, or the split's files are not in it.
    """
    _check_split_name(name)
    folder = Path(directory) if directory is not None else find_scan_dir()
    if folder is None:
        raise FileNotFoundError(
            "no SCAN folder found: pass directory=, or set SPECTRAL_EDGE_SCAN_DIR to the folder holding "
            "tasks_train_<split>.txt and tasks_test_<split>.txt"
        )
    stem, subfolder = _FILES[name]
    sides = []
    for side in ("train", "test"):
        filename = f"tasks_{side}_{stem}.txt"
        path = next((p for p in (folder / filename, folder / subfolder / filename) if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{filename} is neither in {folder} nor in {folder / subfolder}")
        sides.append(read_scan_file(path))
    return ScanSplit(name=name, train=sides[0], test=sides[1], source=str(folder))


def scan_subset(
    split: ScanSplit,
    *,
    n_train: int = 2048,
    n_test: int | None = 500,
    seed: int = 0,
    protocol: str = "seeded",
) -> ScanSplit:
    """A random subset of a split: the thesis's SCAN runs use 2,048 training and 500 test pairs (§27).

    The author's code (``dyck_scan/scan/grok_sweep.py``, data seed 0) takes the first ``n_train`` of the
    simple training file after ``random.Random(seed).shuffle`` of its indices, and the test pairs at the
    first ``n_test`` entries of ``torch.randperm`` seeded with ``seed``. ``protocol="author"`` repeats
    exactly that, so ``scan_subset(load_scan_split("simple"), protocol="author")`` is the paper's subset;
    ``protocol="seeded"`` draws both sides with ``torch.Generator`` alone.

    Args:
        split: the split to subsample, e.g. ``scan_split("simple", seed=0)``.
        n_train: training pairs to keep, ``1 ≤ n_train ≤ len(split.train)``.
        n_test: test pairs to keep, ``1 ≤ n_test ≤ len(split.test)``; ``None`` keeps all.
        seed: seed of the draw.
        protocol: ``"seeded"`` or ``"author"``.

    Returns:
        The subset, named ``"<name>[n_train/n_test]"``, in the drawn order.

    Raises:
        ValueError: on a size out of range or an unknown protocol.

    Example:
        >>> sub = scan_subset(scan_split("simple", seed=0), seed=0)
        >>> len(sub.train), len(sub.test), sub.name
        (2048, 500, 'simple[2048/500]')
    """
    if protocol not in ("seeded", "author"):
        raise ValueError(f"protocol must be 'seeded' or 'author', got {protocol!r}")
    n_test = len(split.test) if n_test is None else n_test
    for label, n, available in (("n_train", n_train, len(split.train)), ("n_test", n_test, len(split.test))):
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= available:
            raise ValueError(
                f"{label} must be an int in [1, {available}] for split {split.name!r}, got {n!r}"
            )
    if protocol == "author":
        train_order = list(range(len(split.train)))
        random.Random(seed).shuffle(train_order)
    else:
        train_order = torch.randperm(len(split.train), generator=torch.Generator().manual_seed(seed)).tolist()
    test_order = torch.randperm(len(split.test), generator=torch.Generator().manual_seed(seed)).tolist()
    return ScanSplit(
        name=f"{split.name}[{n_train}/{n_test}]",
        train=tuple(split.train[i] for i in train_order[:n_train]),
        test=tuple(split.test[i] for i in test_order[:n_test]),
        source=split.source,
    )


@dataclass(frozen=True)
class ScanTensors:
    """SCAN pairs as padded id tensors for an encoder–decoder trained with teacher forcing.

    ``tgt_in`` is ``<bos>`` + actions and ``tgt_out`` is actions + ``<eos>``, so ``tgt_out[:, t]`` is the
    token to predict after reading ``tgt_in[:, : t + 1]``. All tensors are int64 on the CPU.
    """

    src: torch.Tensor  # (N, src_len) command ids from INPUT_VOCAB, right-padded with PAD_ID
    tgt_in: torch.Tensor  # (N, tgt_len) decoder inputs from OUTPUT_VOCAB, right-padded with PAD_ID
    tgt_out: torch.Tensor  # (N, tgt_len) decoder targets from OUTPUT_VOCAB, padded with IGNORE_INDEX

    @property
    def src_padding_mask(self) -> torch.Tensor:
        """``(N, src_len)`` bool, True at padding: a ``src_key_padding_mask`` for ``nn.Transformer``."""
        return self.src == PAD_ID

    @property
    def tgt_padding_mask(self) -> torch.Tensor:
        """``(N, tgt_len)`` bool, True at padding of ``tgt_in``."""
        return self.tgt_in == PAD_ID


_INPUT_ID = {word: i for i, word in enumerate(INPUT_VOCAB)}
_OUTPUT_ID = {token: i for i, token in enumerate(OUTPUT_VOCAB)}


def encode_scan(
    pairs: Sequence[ScanPair], *, src_len: int = MAX_COMMAND_WORDS, tgt_len: int = MAX_ACTIONS + 1
) -> ScanTensors:
    """Tokenise pairs into padded id tensors (vocabularies :data:`INPUT_VOCAB`, :data:`OUTPUT_VOCAB`).

    The default lengths fit every SCAN command (9 words) and action sequence (48 actions + one of
    ``<bos>``/``<eos>``), so every split gets the same shapes.

    Args:
        pairs: ``(command, actions)`` pairs.
        src_len: encoder length, at least the longest command.
        tgt_len: decoder length, at least the longest action sequence + 1.

    Returns:
        The tensors, one row per pair.

    Raises:
        ValueError: on an unknown word or action, or a pair longer than the lengths allow.

    Example:
        >>> t = encode_scan([("jump twice", "I_JUMP I_JUMP")], tgt_len=4)
        >>> t.src[0, :3].tolist(), t.tgt_in.tolist(), t.tgt_out.tolist()
        ([4, 10, 0], [[1, 6, 6, 0]], [[6, 6, 2, -100]])
        >>> decode_command(t.src[0]), decode_actions(t.tgt_out[0])
        ('jump twice', 'I_JUMP I_JUMP')
    """
    n = len(pairs)
    src = torch.full((n, src_len), PAD_ID, dtype=torch.int64)
    tgt_in = torch.full((n, tgt_len), PAD_ID, dtype=torch.int64)
    tgt_out = torch.full((n, tgt_len), IGNORE_INDEX, dtype=torch.int64)
    for row, (command, actions) in enumerate(pairs):
        words, acts = command.split(" "), actions.split(" ")
        if len(words) > src_len or len(acts) + 1 > tgt_len:
            raise ValueError(
                f"pair {row} needs src_len >= {len(words)} and tgt_len >= {len(acts) + 1}, "
                f"got src_len={src_len}, tgt_len={tgt_len}; raise them"
            )
        try:
            src[row, : len(words)] = torch.tensor([_INPUT_ID[w] for w in words])
            ids = [_OUTPUT_ID[a] for a in acts if a in ACTIONS]
        except KeyError as err:
            raise ValueError(f"pair {row}: {err.args[0]!r} is not a word of INPUT_VOCAB") from None
        if len(ids) != len(acts):
            bad = next(a for a in acts if a not in ACTIONS)
            raise ValueError(f"pair {row}: {bad!r} is not an action, expected one of {ACTIONS}")
        tgt_in[row, : len(ids) + 1] = torch.tensor([BOS_ID, *ids])
        tgt_out[row, : len(ids) + 1] = torch.tensor([*ids, EOS_ID])
    return ScanTensors(src=src, tgt_in=tgt_in, tgt_out=tgt_out)


def _ids(row: torch.Tensor | Iterable[int]) -> list[int]:
    return row.tolist() if isinstance(row, torch.Tensor) else list(row)


def decode_command(ids: torch.Tensor | Iterable[int]) -> str:
    """The command of one row of ``src`` ids, padding dropped."""
    words = []
    for i in _ids(ids):
        if not 0 <= i < len(INPUT_VOCAB):
            raise ValueError(f"input id must lie in [0, {len(INPUT_VOCAB)}), got {i}")
        if i != PAD_ID:
            words.append(INPUT_VOCAB[i])
    return " ".join(words)


def decode_actions(ids: torch.Tensor | Iterable[int]) -> str:
    """The actions of one decoder row (``tgt_in``, ``tgt_out`` or predictions).

    A leading ``<bos>`` is skipped and reading stops at the first ``<eos>``, padding or ``IGNORE_INDEX``.
    """
    actions = []
    for position, i in enumerate(_ids(ids)):
        if i in (EOS_ID, PAD_ID, IGNORE_INDEX):
            break
        if position == 0 and i == BOS_ID:
            continue
        if not BOS_ID < i < len(OUTPUT_VOCAB):
            raise ValueError(
                f"action id must lie in [3, {len(OUTPUT_VOCAB)}) at position {position}, got {i}"
            )
        actions.append(OUTPUT_VOCAB[i])
    return " ".join(actions)
