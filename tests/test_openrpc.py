"""The OpenRPC document (SPEC §8) is valid against the OpenRPC meta-schema, describes every
method the dispatcher has, with schemas generated from the code's own types, and is what
`GET /openrpc.json` and `rpc.discover` answer; docs/jsonrpc.md is made from it and is fresh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from stagewise.manager.openrpc import document, markdown
from stagewise.manager.rpc import package_version, schema_methods
from tests.helpers import ManagerProc

ROOT = Path(__file__).resolve().parents[1]
META = ROOT.parent / "shared" / "data" / "openrpc-meta-schema.json"


def the_document() -> dict[str, Any]:
    return document(schema_methods(), package_version())


def test_the_document_is_valid_openrpc() -> None:
    meta = json.loads(META.read_text())
    jsonschema.Draft7Validator.check_schema(meta)
    errors = sorted(jsonschema.Draft7Validator(meta).iter_errors(the_document()), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def test_every_method_and_param_is_described() -> None:
    doc = the_document()
    methods = schema_methods()
    assert [m["name"] for m in doc["methods"]] == sorted(methods)
    schemas = doc["components"]["schemas"]
    for m in doc["methods"]:
        struct = methods[m["name"]][0]
        assert [p["name"] for p in m["params"]] == [
            f.encode_name for f in __import__("msgspec").structs.fields(struct)
        ], m["name"]
        for ref in _refs(m):
            where, _, name = ref.removeprefix("#/components/").partition("/")
            assert name in doc["components"][where], (m["name"], ref)
    create = next(m for m in doc["methods"] if m["name"] == "tasks.create")
    assert create["params"][0]["schema"]["$ref"] == "#/components/schemas/TaskDoc"
    commands = schemas["TaskDoc"]["properties"]["commands"]
    assert {r["$ref"].rsplit("/", 1)[1] for r in commands["items"]["anyOf"]} == {
        "CallCommand",
        "TimerCommand",
        "MessageCommand",
    }


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [value["$ref"]] if "$ref" in value else [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def test_the_reference_in_docs_is_fresh() -> None:
    """docs/jsonrpc.md is generated: `python -m stagewise.manager.openrpc --markdown > docs/jsonrpc.md`."""
    assert (ROOT / "docs" / "jsonrpc.md").read_text() == markdown(the_document())


async def test_served_over_http_and_rpc(daemons: Any) -> None:
    m: ManagerProc = await daemons.manager()
    status, served = await m.get("/openrpc.json")
    assert status == 200
    assert served == the_document() == await m.rpc("rpc.discover")
