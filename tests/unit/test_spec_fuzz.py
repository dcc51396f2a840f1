"""The spec parser never shows a traceback: mutated example specs (keys dropped, types changed, garbage
values, wrong nesting, broken or hostile YAML) either load or raise SpecError naming the place, and
`compound validate` on them exits 0 or 2 with a message, never a Python traceback."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.core.errors import SpecError
from toolkit.spec.schema import load_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(ROOT.glob("examples/*/pipeline.yaml"))
DOCS = {path.parent.name: yaml.safe_load(path.read_text()) for path in EXAMPLES}
TEXTS = {path.parent.name: path.read_text() for path in EXAMPLES}
# ~10 s in CI; COMPOUND_FUZZ_EXAMPLES=3000 for a longer hunt after touching toolkit/spec/schema.py.
FUZZ = settings(
    max_examples=int(os.environ.get("COMPOUND_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Values a spec never holds where they land: every YAML type, edge numbers, names with odd characters.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, -2, 2**31, 2**63, float("nan"), float("inf"), float("-inf"), 1e308, -0.0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", " ", "~", "null", "fp33", "string", "a:b", "mod:Cls", "-1", "1e3", "x" * 300, "é:ü", "\t"]),
)
garbage = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=4)
    ),
    max_leaves=8,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every location in the document, the root included."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, prefix + (index,))


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def mutate(doc: Any, path: tuple[Any, ...], how: str, value: Any) -> Any:
    """The document with one change at `path`: a drop, a replacement, a wrapping or a renamed key."""
    if not path:
        return value if how == "replace" else [doc] if how == "wrap_list" else {"spec": doc}
    parent, key = _get(doc, path[:-1]), path[-1]
    if how == "drop":
        del parent[key]
    elif how == "replace":
        parent[key] = value
    elif how == "wrap_list":
        parent[key] = [parent[key]]
    elif how == "wrap_dict":
        parent[key] = {str(value)[:10] or "x": parent[key]}
    elif how == "unwrap" and isinstance(parent[key], (dict, list)) and parent[key]:
        inner = parent[key]
        parent[key] = next(iter(inner.values())) if isinstance(inner, dict) else inner[0]
    elif how == "rename" and isinstance(parent, dict):
        parent[str(value)[:20]] = parent.pop(key)
    elif how == "dup" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    return doc


@st.composite
def mutated_docs(draw: Callable[..., Any]) -> Any:
    name = draw(st.sampled_from(sorted(DOCS)))
    doc = copy.deepcopy(DOCS[name])
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        everywhere = list(paths(doc))
        path = draw(st.sampled_from(everywhere))
        how = draw(st.sampled_from(["drop", "replace", "replace", "wrap_list", "wrap_dict", "unwrap", "rename", "dup"]))
        doc = mutate(doc, path, how, draw(garbage))
    return doc


@st.composite
def broken_texts(draw: Callable[..., Any]) -> str:
    """The example's text with bytes cut or spliced in, indentation shifted, or a key or a value on some
    line swapped for hostile YAML (tags, anchors, complex keys, deep nesting): YAML that may not parse."""
    lines = TEXTS[draw(st.sampled_from(sorted(TEXTS)))].splitlines()
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        row = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        line = lines[row]
        indent = len(line) - len(line.lstrip())
        key, colon, _ = line.partition(":")
        edit = draw(st.sampled_from(["cut", "splice", "indent", "dedent", "value", "value", "key"]))
        if edit == "cut" and line:
            at = draw(st.integers(min_value=0, max_value=len(line) - 1))
            line = line[:at] + line[at + draw(st.integers(min_value=1, max_value=20)) :]
        elif edit == "splice":
            at = draw(st.integers(min_value=0, max_value=len(line)))
            line = line[:at] + draw(st.one_of(st.text(max_size=12), st.sampled_from(PIECES))) + line[at:]
        elif edit == "indent":
            line = "  " + line
        elif edit == "dedent":
            line = line.removeprefix("  ")
        elif edit == "value" and colon:
            line = f"{key}: {draw(st.sampled_from(VALUES))}"
        elif edit == "key" and colon:
            line = " " * indent + draw(st.sampled_from(KEYS)) + line[len(key) :]
        lines[row] = line
    return "\n".join(lines) + "\n"


PIECES = [": ", "- ", "[", "]", "{", "}", "&a ", "*a", "*nope", "\t", "---", "...", "%YAML 1.1", "'", '"', "|", ">",
          "#", "\x00", "\ufeff", "~", "<<: *a"]  # fmt: skip
VALUES = [
    "!!int abc", "!!float x", "!!timestamp 2020-13-99x", "!!binary @@", "!!bool maybe", "!!python/name:os.system",
    "&r [*r]", "&m {k: *m}", "*undefined", "[" * 300 + "]" * 300, "!!int " + "9" * 5000, "{[1]: 2}",
    "!!set {a, b}", "!!omap [a, b]", "!!str", "", "- x", "[a, {b: [c, {d: e}]}]", "'unterminated", "1e400",
]  # fmt: skip
KEYS = ["[a, b]", "{a: 1}", "? [a]\n  ", "!!int x", "&k name", "*k", "<<", "~", "''", "'9'"]


def assert_loads_or_spec_error(path: Path) -> None:
    try:
        load_spec(path)
    except SpecError as exc:
        assert exc.problems and str(path) in str(exc)
    # anything else propagates, and hypothesis shrinks it to the smallest spec that shows it


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file rewritten by every example (hypothesis runs examples in turn)."""
    return tmp_path_factory.mktemp("fuzz") / "pipeline.yaml"


@FUZZ
@given(doc=mutated_docs())
def test_mutated_example_specs_load_or_raise_spec_error(spec_file: Path, doc: Any) -> None:
    spec_file.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    assert_loads_or_spec_error(spec_file)


@FUZZ
@given(text=broken_texts())
def test_broken_yaml_text_loads_or_raises_spec_error(spec_file: Path, text: str) -> None:
    spec_file.write_text(text, encoding="utf-8")
    assert_loads_or_spec_error(spec_file)


def _laughs(levels: int) -> str:
    names = [chr(ord("a") + i) for i in range(levels)]
    rows = [f"{names[0]}: &{names[0]} [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    rows += [f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]" for p, n in zip(names, names[1:])]
    return "\n".join(rows) + "\n"


# What the fuzzer found (each a traceback or a hang before spec.py handled it), and its neighbours.
HOSTILE = {
    "list as a key": ("? [a, b]\n: 1\nname: x\n", "a key must be a plain name"),
    "mapping as a key": ("{[1]: 2}\n", "a key must be a plain name"),
    "int tag on text": ("name: x\nmodels: !!int abc\n", "'abc' is not a valid int"),
    "float tag on text": ("name: !!float abc\n", "'abc' is not a valid float"),
    "timestamp tag on text": ("name: !!timestamp abc\n", "'abc' is not a valid timestamp"),
    "bool tag on text": ("name: !!bool maybe\n", "'maybe' is not a valid bool"),
    "int past Python's digit limit": ("name: x\nmodels: " + "9" * 5000 + "\n", "is not a valid int"),
    "anchor inside itself": ("name: &a [*a]\n", "recursive anchor"),
    "mapping inside itself": ("models: &m {x: *m}\n", "recursive anchor"),
    "lists nested 5000 deep": ("name: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    "mappings nested 150 deep": ("name: " + "{a: " * 150 + "1" + "}" * 150 + "\n", "nested"),
    "a billion laughs": (_laughs(9), "more than 100000 values"),
    "python tag on a scalar": ("name: !!python/object:os.system x\n", "could not determine a constructor"),
    "python tag on a list": ("name: !!python/object/apply:os.system [echo]\n", "(name): Input should be a valid"),
    "two documents": ("name: a\n---\nname: b\n", "malformed YAML"),
    "NUL character": ("name: \x00\n", "malformed YAML"),
}


@pytest.mark.parametrize("text,message", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_yaml_is_a_located_spec_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as failure:
        load_spec(path)
    assert message in str(failure.value) and str(path) in str(failure.value)


def _cli_cases() -> dict[str, str]:
    """A handful of specs for the CLI: one clean, then each kind of damage (handlers stay importable)."""
    textdemo = DOCS["textdemo"]
    dropped = copy.deepcopy(textdemo)
    del dropped["models"]["tok"]["inputs"]
    retyped = copy.deepcopy(textdemo)
    retyped["models"]["sentiment"]["max_batch_size"] = "lots"
    nested = copy.deepcopy(textdemo)
    nested["pipelines"]["classify"]["steps"] = {"steps": nested["pipelines"]["classify"]["steps"]}
    garbage_values = copy.deepcopy(textdemo)
    garbage_values["models"]["topic"]["outputs"]["topics"] = {"dtype": None, "dims": [0, -5, "x"]}
    wrong_wiring = copy.deepcopy(textdemo)
    wrong_wiring["pipelines"]["classify"]["steps"][1]["inputs"] = {"ids": "nowhere"}
    return {
        "clean": yaml.safe_dump(textdemo),
        "dropped key": yaml.safe_dump(dropped),
        "changed type": yaml.safe_dump(retyped),
        "wrong nesting": yaml.safe_dump(nested),
        "garbage values": yaml.safe_dump(garbage_values),
        "wrong wiring": yaml.safe_dump(wrong_wiring),
        "random YAML": TEXTS["textdemo"].replace("models:", "models: [\n", 1),
        **{name: text for name, (text, _) in list(HOSTILE.items())[:8]},
    }


CLI_CASES = _cli_cases()


@pytest.mark.parametrize("text", list(CLI_CASES.values()), ids=list(CLI_CASES))
def test_cli_validate_exits_0_or_2_without_a_traceback(tmp_path: Path, text: str) -> None:
    from toolkit.cli.main import cli

    path = tmp_path / "pipeline.yaml"  # beside the handlers, as the example's own file is
    for handler in (ROOT / "examples" / "textdemo").glob("*.py"):
        (tmp_path / handler.name).write_text(handler.read_text())
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code in (0, 2), f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert "problem(s) in the spec" in result.output and str(path) in result.output
