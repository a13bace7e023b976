"""JSON schemas for structured-output tests and the grammar benchmark, each with one document that satisfies it.

They cover what agent frameworks send: nested objects, arrays, enums, numbers with ranges, required fields,
string patterns, `$ref`. Strings and arrays are bounded so that a small model's reply fits a few dozen tokens.
The documents drive the benchmark's matchers token by token; the tests only need the schemas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SchemaCase:
    name: str
    schema: dict[str, Any]
    example: Any  # a document the schema accepts


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """A closed object: every property required unless told otherwise, no others allowed."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


SHORT_TEXT = {"type": "string", "minLength": 1, "maxLength": 16}
SMALL_INTEGER = {"type": "integer", "minimum": -999, "maximum": 999}

SCHEMAS = [
    SchemaCase(
        "person",
        _object({"name": SHORT_TEXT, "age": {"type": "integer", "minimum": 0, "maximum": 120}}),
        {"name": "Ada", "age": 36},
    ),
    SchemaCase(
        "nested object",
        _object({"user": _object({"id": {"type": "integer", "minimum": 1, "maximum": 9999}, "city": SHORT_TEXT})}),
        {"user": {"id": 42, "city": "Paris"}},
    ),
    SchemaCase(
        "enums",
        _object({"color": {"enum": ["red", "green", "blue"]}, "size": {"type": "string", "enum": ["S", "M", "L"]}}),
        {"color": "green", "size": "M"},
    ),
    SchemaCase(
        "numbers with ranges",
        _object(
            {
                "celsius": {"type": "number", "minimum": -50, "maximum": 60},
                "humidity": {"type": "integer", "minimum": 0, "maximum": 100},
            }
        ),
        {"celsius": 21.5, "humidity": 40},
    ),
    SchemaCase(
        "array of objects",
        _object(
            {
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": _object({"name": SHORT_TEXT, "qty": {"type": "integer", "minimum": 1, "maximum": 99}}),
                }
            }
        ),
        {"items": [{"name": "apple", "qty": 3}, {"name": "pear", "qty": 1}]},
    ),
    SchemaCase(
        "string patterns",
        _object(
            {
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
            }
        ),
        {"zip": "75001", "code": "ABC-12"},
    ),
    SchemaCase(
        "optional and nullable",
        _object(
            {"done": {"type": "boolean"}, "note": {"anyOf": [SHORT_TEXT, {"type": "null"}]}, "rank": {"const": 1}},
            required=["done", "note"],
        ),
        {"done": True, "note": None},
    ),
    SchemaCase(
        "array of digits",
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 4},
        [3, 1, 4],
    ),
    SchemaCase(
        "references",
        {
            "$defs": {"point": _object({"x": {"type": "integer", "minimum": -9, "maximum": 9}, "y": SMALL_INTEGER})},
            **_object({"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}}),
        },
        {"start": {"x": 1, "y": 2}, "end": {"x": -3, "y": 4}},
    ),
]

# A tool call as an agent framework describes one (OpenAI's function-calling shape): larger, for compile times.
TOOL_CALL = SchemaCase(
    "tool call",
    _object(
        {
            "name": {"enum": ["get_weather", "search_web", "send_email"]},
            "arguments": {
                "anyOf": [
                    _object({"city": SHORT_TEXT, "unit": {"enum": ["celsius", "fahrenheit"]}}, required=["city"]),
                    _object({"query": {"type": "string", "maxLength": 64}, "limit": {"type": "integer"}}, ["query"]),
                    _object(
                        {
                            "to": {"type": "string", "format": "email"},
                            "subject": {"type": "string", "maxLength": 80},
                            "body": {"type": "string"},
                            "cc": {"type": "array", "items": {"type": "string", "format": "email"}},
                        },
                        required=["to", "subject", "body"],
                    ),
                ]
            },
        }
    ),
    {"name": "send_email", "arguments": {"to": "ada@example.com", "subject": "Hello", "body": "See you at 5."}},
)
