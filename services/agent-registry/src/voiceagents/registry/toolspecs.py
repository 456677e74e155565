"""Checks on tool definitions and per-agent tool settings, each failure naming the field.

- A tool's config schema and every function's parameters must be valid JSON Schemas (2020-12)
  describing an object.
- A declarative HTTP function's URL, header and body templates may reference only its declared
  parameters (`{name}`), the tool's config keys (`{config.key}`) and the credentials the voice
  worker fills in for the tool's auth type: `{secret.name}` (an `api_key` tool's secrets, as an
  admin stored them) and `{access_token}` (an `oauth2` tool's token).
- An agent tool's config must validate against its tool's config schema (the error carries the
  JSON path of the offending value); `unselected_functions` must name functions of the tool.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from voiceagents.contracts.tools import (
    AuthType,
    HttpRequestTemplate,
    PlatformToolSpec,
    ToolFunctionSpec,
)
from voiceagents.registry.problems import Invalid
from voiceagents.registry.schemas import PlatformToolCreate

_URL_SCHEMES = ("https://", "http://", "{config.")
# The voice worker's executor fills only placeholders of this form (worker/tools/http.py).
_WORKER_PLACEHOLDER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_SECRET_NAME = re.compile(r"[A-Za-z0-9_.]+")


def check_object_schema(schema: dict[str, Any], field: str) -> None:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        path = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        raise Invalid(
            f"{field} is not a valid JSON Schema: {exc.message}",
            field=field,
            json_path=f"$.{field}{path}",
        ) from None
    if schema.get("type", "object") != "object":
        raise Invalid(f'{field} must describe an object ("type": "object")', field=field)


def _placeholders(template: str, field: str) -> Iterator[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise Invalid(f"{field} is not a valid template: {exc}", field=field) from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or spec or conversion:
            raise Invalid(
                f"{field}: placeholders are {{param}} or {{config.key}}, not {{{name}}}",
                field=field,
            )
        yield name


def _walk_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk_strings(item)


def _check_template(
    template: str, field: str, params: set[str], config_keys: set[str], auth_type: AuthType
) -> None:
    for name in _placeholders(template, field):
        if not _WORKER_PLACEHOLDER.fullmatch(name):
            raise Invalid(f"{field}: {{{name}}} is not a placeholder name", field=field)
        if name.startswith("config."):
            if name.removeprefix("config.") not in config_keys:
                raise Invalid(
                    f"{field} references {{{name}}} but the config schema has no property "
                    f"{name.removeprefix('config.')!r}",
                    field=field,
                )
        elif name.startswith("secret."):
            if auth_type != "api_key":
                raise Invalid(
                    f"{field} references {{{name}}}: only an api_key tool has secrets "
                    f"(this one is {auth_type})",
                    field=field,
                )
            if not _SECRET_NAME.fullmatch(name.removeprefix("secret.")):
                raise Invalid(f"{field}: {{{name}}} names no secret", field=field)
        elif name == "access_token":  # never a model argument, whatever the parameters
            if auth_type != "oauth2":
                raise Invalid(
                    f"{field} references {{access_token}}: only an oauth2 tool has one "
                    f"(this one is {auth_type})",
                    field=field,
                )
        elif name not in params:
            raise Invalid(
                f"{field} references {{{name}}} but the function declares no parameter {name!r}",
                field=field,
            )


def _properties(schema: dict[str, Any]) -> set[str]:
    properties = schema.get("properties", {})
    return set(properties) if isinstance(properties, dict) else set()


def http_tool_spec(data: PlatformToolCreate) -> PlatformToolSpec:
    """Validate a declarative HTTP tool and build its catalog entry."""
    check_object_schema(data.config_schema, "config_schema")
    if data.auth_type == "oauth2" and not data.oauth_provider:
        raise Invalid("an oauth2 tool names its oauth_provider", field="oauth_provider")
    config_keys = _properties(data.config_schema)
    seen: set[str] = set()
    functions = []
    for index, function in enumerate(data.functions):
        where = f"functions[{index}]"
        if function.name in seen:
            raise Invalid(f"function {function.name!r} is defined twice", field=f"{where}.name")
        seen.add(function.name)
        check_object_schema(function.parameters, f"{where}.parameters")
        params = _properties(function.parameters)
        if not function.url_template.startswith(_URL_SCHEMES):
            raise Invalid(
                "url_template must be an http(s) URL (or start with a {config.key})",
                field=f"{where}.url_template",
            )
        templates = [
            (function.url_template, f"{where}.url_template"),
            *(
                (value, f"{where}.headers_template.{header}")
                for header, value in function.headers_template.items()
            ),
            *((value, f"{where}.body_template") for value in _walk_strings(function.body_template)),
        ]
        for template, field in templates:
            _check_template(template, field, params, config_keys, data.auth_type)
        for argument in function.redact_arguments:
            if argument not in params:
                raise Invalid(
                    f"redact_arguments names {argument!r}, which is not a parameter",
                    field=f"{where}.redact_arguments",
                )
        functions.append(
            ToolFunctionSpec(
                name=function.name,
                description=function.description,
                parameters=function.parameters,
                oauth_scopes=function.oauth_scopes,
                idempotent=function.idempotent,
                redact_arguments=function.redact_arguments,
                http=HttpRequestTemplate(
                    method=function.method,
                    url_template=function.url_template,
                    headers_template=function.headers_template,
                    body_template=function.body_template,
                ),
            )
        )
    return PlatformToolSpec(
        name=data.name,
        description=data.description,
        kind="http",
        config_schema=data.config_schema,
        auth_type=data.auth_type,
        oauth_provider=data.oauth_provider,
        functions=functions,
        timeout_seconds=data.timeout_seconds,
    )


def check_code_tool(spec: PlatformToolSpec) -> str | None:
    """Why a code tool reported by a worker cannot enter the catalog, or None if it can."""
    if spec.kind != "code":
        return f"{spec.name}: a worker reports code tools only"
    try:
        check_object_schema(spec.config_schema, "config_schema")
        names: set[str] = set()
        for function in spec.functions:
            if function.name in names:
                return f"{spec.name}: function {function.name!r} is defined twice"
            names.add(function.name)
            check_object_schema(function.parameters, f"{function.name}.parameters")
    except Invalid as exc:
        return f"{spec.name}: {exc.detail}"
    return None


def check_config(spec: PlatformToolSpec, config: dict[str, Any]) -> None:
    """422 with the JSON path of the first value of `config` that breaks the config schema."""
    validator = Draft202012Validator(spec.config_schema)
    errors = sorted(validator.iter_errors(config), key=lambda error: list(error.path))
    if errors:
        error = errors[0]
        json_path = "$.config" + error.json_path.removeprefix("$")
        raise Invalid(
            f"config does not match the {spec.name} config schema at {json_path}: {error.message}",
            field="config",
            json_path=json_path,
        )


def check_unselected(spec: PlatformToolSpec, unselected: list[str]) -> None:
    known = {function.name for function in spec.functions}
    for index, name in enumerate(unselected):
        if name not in known:
            raise Invalid(
                f"unselected_functions names {name!r}, which {spec.name} does not have "
                f"(it has: {', '.join(sorted(known)) or 'no functions'})",
                field=f"unselected_functions[{index}]",
            )
