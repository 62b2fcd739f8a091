"""docs/protocol.md against the protocol it describes.

* Every RPC of every service (request, reply, streaming), every message field (number, name,
  type) and every enum value (number, name) of ``fedkit.proto`` has its row in the document, and
  the document has no row the ``.proto`` lacks. The ``.proto`` is parsed from its text, and the
  parser is checked against the compiled descriptor fedkit runs with.
* The NumPy worker's own generated modules (examples/numpy_worker) describe the same protocol as
  fedkit's (equal serialized file descriptors), so that copy cannot drift.
* The document's payload table names, for every built-in deployable algorithm, exactly the tensor
  paths of its broadcast and of its update.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedkit.algorithm import RoundInfo
from fedkit.client import prepared_template
from fedkit.experiment.deploy import load_deployment
from fedkit.net.errors import ErrorCode
from fedkit.net.proto import PROTOCOL_VERSION
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.params import tree_flatten
from fedkit.registry import ALGORITHMS

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "src" / "fedkit" / "net" / "proto" / "fedkit.proto"
DOC = REPO / "docs" / "protocol.md"
NUMPY_PB2 = REPO / "examples" / "numpy_worker" / "fedkit_pb2.py"


# ----------------------------------------------------------------------------- .proto parser
@dataclass
class Proto:
    """What a ``.proto`` file declares (one level of messages; ``oneof`` fields included)."""

    messages: dict[str, set[tuple[int, str, str]]] = field(default_factory=dict)
    enums: dict[str, set[tuple[int, str]]] = field(default_factory=dict)
    rpcs: dict[str, set[tuple[str, str, str]]] = field(default_factory=dict)


_FIELD = re.compile(r"^(repeated\s+)?([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;$")
_VALUE = re.compile(r"^(\w+)\s*=\s*(\d+)\s*;$")
_RPC = re.compile(
    r"^rpc\s+(\w+)\s*\(\s*(stream\s+)?(\w+)\s*\)\s*returns\s*\(\s*(stream\s+)?(\w+)\s*\)\s*;$"
)


def parse_proto(text: str) -> Proto:
    """Messages, enums and services of ``text`` (comments dropped, one statement per line)."""
    out = Proto()
    stack: list[tuple[str, str]] = []  # (kind, name) of the open blocks
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line or line.startswith(("syntax", "package", "option", "import")):
            continue
        if m := re.fullmatch(r"(message|enum|service|oneof)\s+(\w+)\s*\{", line):
            kind, name = m[1], m[2]
            stack.append((kind, name))
            if kind == "message":
                out.messages[name] = set()
            elif kind == "enum":
                out.enums[name] = set()
            elif kind == "service":
                out.rpcs[name] = set()
            continue
        if line == "}":
            stack.pop()
            continue
        owner = next((s for s in reversed(stack) if s[0] != "oneof"), None)
        assert owner is not None, f"statement outside a block: {line!r}"
        kind, name = owner
        if kind == "message" and (m := _FIELD.match(line)):
            typ = f"repeated {m[2]}" if m[1] else m[2]
            out.messages[name].add((int(m[4]), m[3], typ))
        elif kind == "enum" and (m := _VALUE.match(line)):
            out.enums[name].add((int(m[2]), m[1]))
        elif kind == "service" and (m := _RPC.match(line)):
            req = f"stream {m[3]}" if m[2] else m[3]
            rep = f"stream {m[5]}" if m[4] else m[5]
            out.rpcs[name].add((m[1], req, rep))
        else:
            raise AssertionError(f"unparsed .proto line in {kind} {name}: {line!r}")
    assert not stack, f"unclosed blocks {stack}"
    return out


@pytest.fixture(scope="module")
def proto() -> Proto:
    return parse_proto(PROTO.read_text())


_SCALARS = {
    1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 8: "bool", 9: "string",
    12: "bytes", 13: "uint32",
}  # fmt: skip
"""``FieldDescriptor.type`` numbers of the scalar types the protocol uses."""


def test_parser_reads_what_the_compiled_descriptor_holds(proto: Proto) -> None:
    fd = pb.DESCRIPTOR
    assert fd.package == "fedkit.net.v1"
    assert set(proto.messages) == set(fd.message_types_by_name)
    for name, desc in fd.message_types_by_name.items():
        want = set()
        for f in desc.fields:
            typ = f.message_type or f.enum_type
            base = typ.name if typ is not None else _SCALARS[f.type]
            repeated = f.label == f.LABEL_REPEATED if hasattr(f, "label") else f.is_repeated
            want.add((f.number, f.name, f"repeated {base}" if repeated else base))
        assert proto.messages[name] == want, name
    assert set(proto.enums) == set(fd.enum_types_by_name)
    for name, enum in fd.enum_types_by_name.items():
        assert proto.enums[name] == {(v.number, v.name) for v in enum.values}, name
    assert set(proto.rpcs) == set(fd.services_by_name)
    for name, svc in fd.services_by_name.items():
        got = {
            (m.name, ("stream " if m.client_streaming else "") + m.input_type.name,
             ("stream " if m.server_streaming else "") + m.output_type.name)
            for m in svc.methods
        }  # fmt: skip
        assert proto.rpcs[name] == got, name


def test_parser_refuses_what_it_does_not_understand() -> None:
    with pytest.raises(AssertionError, match="unparsed"):
        parse_proto("message A {\n  map<string, string> m = 1;\n}\n")
    p = parse_proto(
        "// c\nenum E {\n  Z = 0;\n}\nmessage M {\n  oneof x {\n    A a = 1; // note\n  }\n"
        "  repeated string s = 2;\n}\nservice S {\n  rpc R(stream M) returns (M);\n}\n"
    )
    assert p.messages == {"M": {(1, "a", "A"), (2, "s", "repeated string")}}
    assert p.rpcs == {"S": {("R", "stream M", "M")}}
    assert p.enums == {"E": {(0, "Z")}}


# ----------------------------------------------------------------------------- the document
def doc_sections(text: str) -> dict[str, list[list[str]]]:
    """Table rows (cells, backticks stripped) under each ``### `Name``` heading."""
    sections: dict[str, list[list[str]]] = {}
    rows: list[list[str]] | None = None
    for line in text.splitlines():
        if m := re.fullmatch(r"###\s+`(\w+)`\s*", line):
            rows = sections.setdefault(m[1], [])
        elif line.startswith("#"):
            rows = None
        elif rows is not None and line.startswith("|") and not re.match(r"^\|[\s|:-]+\|$", line):
            rows.append([c.strip().strip("`") for c in line.strip("|").split("|")])
    return sections


def documented(text: str, proto: Proto) -> Proto:
    """What the document's tables say, in the shape of :class:`Proto`."""
    sections = doc_sections(text)
    out = Proto()
    for name in proto.messages:
        rows = sections.get(name, [])
        out.messages[name] = {(int(r[0]), r[1], r[2]) for r in rows if r[0].isdigit()}
    for name in proto.enums:
        out.enums[name] = {(int(r[0]), r[1]) for r in sections.get(name, []) if r[0].isdigit()}
    for name in proto.rpcs:
        rows = sections.get(name, [])
        out.rpcs[name] = {(r[0], r[1], r[2]) for r in rows if r[0] not in ("RPC",)}
    return out


def differences(proto: Proto, doc: Proto) -> Iterator[str]:
    for kind in ("messages", "enums", "rpcs"):
        want, got = getattr(proto, kind), getattr(doc, kind)
        for name in want:
            for missing in sorted(want[name] - got[name], key=str):
                yield f"{kind[:-1]} {name}: {missing} undocumented"
            for extra in sorted(got[name] - want[name], key=str):
                yield f"{kind[:-1]} {name}: documented {extra} is not in the .proto"


def test_every_rpc_message_field_and_code_is_documented(proto: Proto) -> None:
    problems = list(differences(proto, documented(DOC.read_text(), proto)))
    assert not problems, "\n".join(problems)
    # not vacuous: the protocol has its four RPCs, its messages and its codes
    assert len(proto.rpcs["Coordinator"]) == 4
    assert sum(len(f) for f in proto.messages.values()) >= 40
    assert len(proto.enums["ErrorCode"]) == len(ErrorCode) + 1  # + ERROR_CODE_UNSPECIFIED


def test_a_missing_or_wrong_row_is_found(proto: Proto) -> None:
    text = DOC.read_text()
    row = "| 5 | `protocol_version` | `uint32` |"
    assert text.count(row) == 1
    dropped = list(differences(proto, documented(text.replace(row, "| x |"), proto)))
    assert dropped == ["message RegisterRequest: (5, 'protocol_version', 'uint32') undocumented"]
    wrong = text.replace(row, row.replace("uint32", "int32"))
    retyped = list(differences(proto, documented(wrong, proto)))
    assert len(retyped) == 2
    code = "| 15 | `UNSUPPORTED_VERSION` |"
    assert text.count(code) == 1
    assert list(differences(proto, documented(text.replace(code, "| - |"), proto))) == [
        "enum ErrorCode: (15, 'UNSUPPORTED_VERSION') undocumented"
    ]


def test_document_states_the_version_it_describes() -> None:
    text = DOC.read_text()
    assert text.startswith(f"# The fedkit wire protocol, version {PROTOCOL_VERSION}\n")
    assert f"**protocol version {PROTOCOL_VERSION}**" in text


# ----------------------------------------------------------------------------- generated copy
def serialized_descriptor(path: Path) -> bytes:
    """The file descriptor a generated ``*_pb2.py`` registers, read without importing it."""
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
        ):
            arg = node.args[0]
            assert isinstance(arg, ast.Constant) and isinstance(arg.value, bytes)
            return arg.value
    raise AssertionError(f"{path} registers no file descriptor")


def test_numpy_worker_generated_modules_match_the_proto() -> None:
    # stale? run examples/numpy_worker/gen_proto.sh
    assert serialized_descriptor(NUMPY_PB2) == pb.DESCRIPTOR.serialized_pb
    grpc_module = (NUMPY_PB2.parent / "fedkit_pb2_grpc.py").read_text()
    assert "import fedkit_pb2 as fedkit__pb2" in grpc_module
    for rpc in ("Register", "GetTask", "PushResult", "Heartbeat"):
        assert f"'/fedkit.net.v1.Coordinator/{rpc}'" in grpc_module


# ----------------------------------------------------------------------------- payload table
EXPERIMENT = """
[data]
dataset = "synthetic"
partition = "natural"
num_clients = 2

[model]
name = "{model}"
hidden = [4]

[algorithm]
name = "{name}"
{options}

[run]
rounds = 1
clients_per_round = 2
"""
MODELS = {"fedbn": "mlp_bn"}
OPTIONS = {"fedper": 'head = ["3.weight", "3.bias"]'}


def patterns(tree: Any, names: set[str]) -> set[str]:
    """A payload's tensor paths with every model parameter name replaced by ``<p>``."""
    out = set()
    for path in tree_flatten(tree):
        suffix = next((n for n in names if path.endswith("/" + n)), None)
        out.add(path if suffix is None else path[: -len(suffix)] + "<p>")
    return out


def payload_rows() -> dict[str, list[str]]:
    section = DOC.read_text().split("### The built-in algorithms' payloads", 1)[1]
    rows = {}
    for line in section.split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            rows[cells[0].strip("`")] = cells
    return rows


def test_payload_table_names_every_builtin_algorithms_tensors(tmp_path: Path) -> None:
    rows = payload_rows()
    builtin = {n for n in ALGORITHMS if str(ALGORITHMS.entry(n).target).startswith("fedkit.")}
    deployable = sorted(builtin - {"centralized"})
    assert sorted(rows) == deployable
    info = RoundInfo(round=0, seed=0, num_clients=2, cohort_size=2)
    for name in deployable:
        path = tmp_path / f"{name}.toml"
        path.write_text(
            EXPERIMENT.format(
                name=name, model=MODELS.get(name, "mlp"), options=OPTIONS.get(name, "")
            )
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exp = load_deployment(path)
        init = exp.initial_params(exp.build_model(num_classes=3, input_shape=(5,)))
        alg = exp.algorithm
        sent = patterns(alg.broadcast(alg.init_state(init), info), set(init))
        back = patterns(prepared_template(alg, init, 0), set(init))
        cells = rows[name]
        assert set(re.findall(r"`([^`]+)`", cells[1])) == sent, name
        assert set(re.findall(r"`([^`]+)`", cells[2])) == back, name
