"""The public surface of phoenix_trio.raft: every name re-exported explicitly, nothing private leaks."""

from __future__ import annotations

import ast
from pathlib import Path

import phoenix_trio.raft as raft


def test_every_import_in_init_is_an_explicit_reexport() -> None:
    tree = ast.parse(Path(raft.__file__).read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert node.module and node.module.startswith("_"), node.module
            for alias in node.names:
                assert alias.asname == alias.name, f"{alias.name} is not re-exported as itself"
                names.append(alias.name)
    assert len(names) == len(set(names))
    assert all(not n.startswith("_") for n in names)
    for name in names:
        assert getattr(raft, name) is not None


def test_the_design_surface_is_public() -> None:
    for name in (
        "RaftNode",
        "RaftConfig",
        "WriteAheadLog",
        "KVStateMachine",
        "TotalOrderGroup",
        "SimCluster",
        "check_linearizable",
        "encode",
        "decode",
        "Committed",
        "Queued",
        "Session",
    ):
        assert hasattr(raft, name), name
    from phoenix_trio import NotLeader, PhoenixError

    assert issubclass(raft.TransferInProgress, NotLeader)
    assert issubclass(raft.RaftError, PhoenixError)


def test_every_private_module_says_what_it_is_for() -> None:
    for path in Path(raft.__file__).parent.glob("_*.py"):
        if path.name == "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc) > 40, path.name
