"""Hypothesis strategies for the JSON Schema subset the worker's OpenAPI document uses (types,
enum, const, anyOf, objects with properties/required, arrays, number bounds, minLength).
Keywords outside it (dependentSchemas) are left to the caller, which filters with a validator."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

TEXT = st.text(max_size=24)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([from_schema(option) for option in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        return st.floats(
            low,
            schema.get("maximum"),
            exclude_min="exclusiveMinimum" in schema,
            allow_nan=False,
            allow_infinity=False,
        ) | st.integers(
            None if low is None else int(low) + ("exclusiveMinimum" in schema),
            None if schema.get("maximum") is None else int(schema["maximum"]),
        )
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=24)
    if kind == "array":
        return st.lists(
            from_schema(schema.get("items", {})),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 4), 4),
        )
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {name: from_schema(properties[name]) for name in sorted(required)},
            optional={
                name: from_schema(sub) for name, sub in properties.items() if name not in required
            },
        )
    return st.none() | st.booleans() | st.integers() | TEXT  # no constraint: any scalar
