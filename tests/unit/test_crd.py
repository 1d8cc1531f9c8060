"""Structural checks of the CRD, the examples and the invalid specs, without a cluster.

The end-to-end tests apply the invalid specs against a real kube-apiserver (CEL rules included);
here a JSON Schema validator stands in for the OpenAPI part of the CRD.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from glowplug_operator.engines import ENGINES
from glowplug_operator.spec import BUILTIN_OPTIMIZATIONS, parse_spec

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "modelserver.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((ROOT / "tests" / "data" / "invalid-specs").glob("*.yaml"))


def load_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def version() -> dict[str, Any]:
    versions: list[dict[str, Any]] = load_crd()["spec"]["versions"]
    assert [v["name"] for v in versions] == ["v1alpha1"]
    return versions[0]


def root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = version()["schema"]["openAPIV3Schema"]
    return schema


def walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under ``schema`` with its dotted path (``[]`` for list items)."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def to_json_schema(node: Any) -> Any:
    """The CRD schema as plain JSON Schema: drop x-kubernetes-* and defaults."""
    if isinstance(node, dict):
        return {
            key: to_json_schema(value)
            for key, value in node.items()
            if not key.startswith("x-kubernetes-") and key not in ("default", "format")
        }
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    return node


def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(to_json_schema(root_schema()))


def test_names_scope_and_version() -> None:
    crd = load_crd()
    assert crd["metadata"]["name"] == "modelservers.glowplug.dev"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        "ModelServer",
        "modelservers",
        "modelserver",
    )
    assert names["shortNames"] == ["ms"]
    assert names["categories"] == ["glowplug"]
    assert crd["spec"]["scope"] == "Namespaced"
    assert version()["served"] is True
    assert version()["storage"] is True


def test_status_and_scale_subresources() -> None:
    subresources = version()["subresources"]
    assert subresources["status"] == {}
    assert subresources["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_printer_columns_point_at_status_fields() -> None:
    columns = {c["name"]: c for c in version()["additionalPrinterColumns"]}
    assert list(columns) == ["Ready", "Replicas", "Cold start", "Rolled back", "Age"]
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Replicas"]["jsonPath"] == ".status.replicaSummary"
    assert columns["Cold start"]["jsonPath"] == ".status.coldStart.lastSeconds"
    assert columns["Cold start"]["type"] == "number"
    assert columns["Rolled back"]["jsonPath"] == ".status.rolledBack"
    assert columns["Rolled back"]["type"] == "integer"
    status = root_schema()["properties"]["status"]["properties"]
    for name in ("replicaSummary", "coldStart", "rolledBack", "conditions"):
        assert name in status


def test_every_field_has_a_description() -> None:
    undescribed = [
        path
        for path, node in walk(root_schema(), "modelserver")
        if path != "modelserver.metadata"
        and not path.endswith(("[]", "{}"))
        and not node.get("description", "").strip()
    ]
    assert undescribed == []


def test_every_cel_rule_has_a_message() -> None:
    rules = [
        (path, rule)
        for path, node in walk(root_schema(), "modelserver")
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 15
    for path, rule in rules:
        assert rule.get("message") or rule.get("messageExpression"), path


def test_lists_maps_and_strings_are_bounded_for_the_cel_cost_budget() -> None:
    unbounded = []
    for path, node in walk(root_schema()["properties"]["spec"], "spec"):
        if node.get("type") == "array" and "maxItems" not in node:
            unbounded.append(path)
        if isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
            unbounded.append(path)
        is_string = node.get("type") == "string" or node.get("x-kubernetes-int-or-string")
        if is_string and "enum" not in node and "maxLength" not in node:
            unbounded.append(path)
    assert unbounded == []


def test_optimization_names_are_unique_by_list_map_key() -> None:
    startup = root_schema()["properties"]["spec"]["properties"]["startup"]
    optimizations = startup["properties"]["optimizations"]
    assert optimizations["x-kubernetes-list-type"] == "map"
    assert optimizations["x-kubernetes-list-map-keys"] == ["name"]
    assert optimizations["maxItems"] == 32


def test_flags_in_the_cel_rule_match_spec_py_and_the_engines() -> None:
    """The CRD's rule for flags without env/args lists the names the operator knows."""
    rule = root_schema()["properties"]["spec"]["x-kubernetes-validations"][0]["rule"]
    builtin = re.search(r"self.engine.kind == 'builtin'\) &&\s*o.name in \[([^]]*)\]", rule)
    assert builtin is not None
    assert tuple(re.findall(r"'([a-z-]+)'", builtin.group(1))) == BUILTIN_OPTIMIZATIONS
    for kind, engine in ENGINES.items():
        listed = re.search(rf"self.engine.kind == '{kind}' && o.name in \[([^]]*)\]", rule)
        if engine.flags:
            assert listed is not None, kind
            assert re.findall(r"'([a-z-]+)'", listed.group(1)) == list(engine.flags), kind
        else:
            assert listed is None, kind


def test_descriptions_of_defaulted_fields_name_the_default() -> None:
    """kubectl explain does not show defaults; the description of a field users set must.
    (status's default, an object, is described in words.)"""
    for path, node in walk(root_schema()["properties"]["spec"], "modelserver.spec"):
        if "default" in node and node["default"] != {}:
            default = str(node["default"]).lower()
            pattern = rf"defaults to {re.escape(default)}\b"
            assert re.search(pattern, node["description"].lower()), path


def crd_defaults() -> list[tuple[str, Any]]:
    return [
        (path, node["default"])
        for path, node in walk(root_schema()["properties"]["spec"], "spec")
        if "default" in node and node["default"] != {}
    ]


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_crd_defaults_match_the_typed_spec() -> None:
    defaults = crd_defaults()
    assert len(defaults) >= 12
    spec = parse_spec({"spec": {"model": {"source": "hf://org/name"}}})
    for path, default in defaults:
        value: Any = spec
        for part in path.split(".")[1:]:
            value = getattr(value, snake(part))
        assert value == default, path


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    assert body["apiVersion"] == "glowplug.dev/v1alpha1"
    assert body["kind"] == "ModelServer"
    errors = [f"{e.json_path}: {e.message}" for e in validator().iter_errors(body)]
    assert errors == []
    parse_spec(body)


def test_examples_cover_the_documented_cases() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"modelserver.yaml", "embedding.yaml", "custom-flag-vllm.yaml"} <= names


def header(path: Path, key: str) -> str | None:
    for line in path.read_text().splitlines():
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].strip()
    return None


def test_there_are_enough_invalid_specs_each_with_an_expectation() -> None:
    assert len(INVALID) >= 15
    names = []
    for path in INVALID:
        assert re.match(r"^\d\d-[a-z0-9-]+\.yaml$", path.name), path.name
        assert header(path, "expect"), f"{path.name} has no '# expect:' line"
        assert header(path, "field"), f"{path.name} has no '# field:' line"
        body = yaml.safe_load(path.read_text())
        assert body["kind"] == "ModelServer", path.name
        names.append(body["metadata"]["name"])
    assert len(set(names)) == len(names), "invalid specs must have distinct names"


SCHEMA_LEVEL = [
    p
    for p in INVALID
    if re.search(r"Required value|Unsupported value|in body should", header(p, "expect") or "")
]


def test_both_kinds_of_refusal_are_covered() -> None:
    assert len(SCHEMA_LEVEL) >= 8, "OpenAPI-level refusals (enum, bounds, required)"
    assert len(INVALID) - len(SCHEMA_LEVEL) >= 12, "CEL-level refusals (cross-field rules)"


@pytest.mark.parametrize("path", SCHEMA_LEVEL, ids=[p.name for p in SCHEMA_LEVEL])
def test_schema_level_invalid_spec_is_refused_at_its_field(path: Path) -> None:
    """Invalid specs the OpenAPI part of the CRD refuses (the rest need CEL: see e2e)."""
    expected_field = (header(path, "expect") or "").split(":")[0]
    body = yaml.safe_load(path.read_text())
    errors = list(validator().iter_errors(body))
    assert errors, f"{path.name} passes the schema"
    fields = set()
    for error in errors:
        location = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path
        ).lstrip(".")
        if error.validator == "required":
            location = f"{location}.{error.message.split(chr(39))[1]}"
        fields.add(location)
    assert expected_field in fields
