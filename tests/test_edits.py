"""write_train's edits are one change to the file as it is: each `old` found there once, none overlapping; a
file's identity (its fingerprint) and the rule that seeds are the server's."""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT

from server.errors import InvalidInputError
from server.lab.edits import Edit, apply_edits, fingerprint, seeding_faults, validate_source


def test_an_edit_cannot_match_text_that_an_earlier_edit_wrote() -> None:
    with pytest.raises(InvalidInputError, match="edit 2: `old` matches nothing"):
        apply_edits("a = 1\nb = 2\n", [Edit("a = 1", "x = 1"), Edit("x = 1", "y = 1")])


def test_an_edit_is_found_in_the_file_before_the_others_change_it() -> None:
    edits = [Edit("alpha", "beta"), Edit("beta", "gamma")]  # applied in turn, the second would match twice
    assert apply_edits("alpha\nbeta\n", edits) == "beta\ngamma\n"
    assert apply_edits("alpha\nbeta\n", edits[::-1]) == "beta\ngamma\n"


def test_overlapping_edits_are_refused_naming_both() -> None:
    with pytest.raises(InvalidInputError, match="edits 1 and 3 overlap"):
        apply_edits("abcdef", [Edit("abcd", "X"), Edit("ef", "Z"), Edit("cdef", "Y")])


def test_adjacent_edits_both_apply() -> None:
    assert apply_edits("abcdef", [Edit("cd", "2"), Edit("ab", "1")]) == "12ef"


# -- the code's identity ------------------------------------------------------------------------------------

PROGRAM = '''"""doc"""
import torch
from prepare import SEED

LR = 0.1


def step(model, scale):
    """one step"""
    total = 0.0
    for p in model.parameters():
        total += scale * LR
    return total


print(step(torch.nn.Linear(2, 2), 2.0))
'''


def test_renamed_names_comments_and_layout_are_the_same_program() -> None:
    renamed = (PROGRAM.replace("LR", "LEARNING_RATE").replace("total", "acc").replace("scale", "factor")
               .replace("def step", "def update").replace("print(step", "print(update")
               .replace('"""one step"""', "# a comment instead of a docstring"))  # fmt: skip
    assert renamed != PROGRAM and fingerprint(renamed) == fingerprint(PROGRAM)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("LR = 0.1", "LR = 0.2"),  # a constant
        ("total += scale * LR", "total += LR * scale"),  # the order of operands
        ("model.parameters()", "model.buffers()"),  # an attribute is not the file's own name
        ("torch.nn.Linear(2, 2)", "torch.nn.Linear(2, 3)"),
    ],
)
def test_a_change_in_what_it_computes_is_another_program(old: str, new: str) -> None:
    assert fingerprint(PROGRAM.replace(old, new)) != fingerprint(PROGRAM)


def test_a_name_also_used_as_an_attribute_or_keyword_is_not_renamed() -> None:
    """Renaming `lr` would change what `opt.lr` or `f(lr=...)` reach: such names keep their identity."""
    a = "lr = 1\nclass O:\n    lr = 2\nprint(O.lr, lr)\n"
    b = "rate = 1\nclass O:\n    rate = 2\nprint(O.lr, rate)\n"  # O.lr no longer exists: another program
    assert fingerprint(a) != fingerprint(b)


def test_a_file_with_a_star_import_keeps_every_name() -> None:
    a = "from prepare import *\nx = SEED\nprint(x)\n"
    assert fingerprint(a) != fingerprint(a.replace("x", "y"))


# -- seeds are the server's ---------------------------------------------------------------------------------


def test_the_default_train_py_seeds_with_the_servers_seed_only() -> None:
    assert seeding_faults((REPO_ROOT / "experiment" / "train.py").read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "line",
    [
        "SEED = 7",
        "torch.manual_seed(7)",
        "torch.manual_seed(SEED + 1)",
        "torch.cuda.manual_seed_all(1234)",
        "random.seed()",
        "np.random.default_rng()",
        "g = torch.Generator().manual_seed(3)",
        "loader = make_dataloader(tok, 2, 8, 'train', seed=5)",
        "torch.set_rng_state(state)",
    ],
)
def test_a_file_that_chooses_its_own_seed_is_refused_before_it_is_written(line: str) -> None:
    with pytest.raises(InvalidInputError, match="seeds are the server's"):
        validate_source(f"import torch\nfrom prepare import SEED\n{line}\n", "train.py", 50_000)


def test_seeding_with_prepares_seed_is_allowed() -> None:
    source = "import torch, prepare\nfrom prepare import SEED\ntorch.manual_seed(SEED)\nx = f(seed=prepare.SEED)\n"
    assert seeding_faults(source) == []
