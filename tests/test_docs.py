"""The README's "Bad input" section is docs/bad_inputs.md, word for word (one table, two places to read it)."""
from helpers import REPO_ROOT


def test_readme_carries_the_bad_input_table():
    docs = (REPO_ROOT / "docs" / "bad_inputs.md").read_text(encoding="utf-8")
    body = docs.split("\n", 1)[1].strip("\n")
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Bad input\n"):]
    assert body in section, "README.md's Bad input section differs from docs/bad_inputs.md; copy the file's body over"
    assert body.count("\n| ") >= 50  # the table itself, not an empty shell
