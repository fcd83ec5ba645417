"""What every settings reader shares, with no dependency inside the project: the error type,
durations, the one YAML reader and the one jsonschema error formatter.

config, the provider list, tagging rules and the web config file all read YAML through
read_yaml() and word schema errors through describe_schema_error(), so the same mistake
reads the same wherever it is made. Modules anywhere in the exporter import ConfigError
from here, so nothing needs exporter.config just to raise one (no import cycles).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:  # jsonschema is imported only where a schema is checked
    import jsonschema


class ConfigError(ValueError):
    """A bad setting; the message is one line that names the field."""


_DURATION_RE = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_DURATION_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
_DURATION_HINT = "(use e.g. 500ms, 1s, 1m30s or 0.5)"


def parse_duration(value: Any) -> float:
    """Seconds from a Prometheus duration ('500ms', '1m30s') or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    number: float | None
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            number = None
    if number is not None:
        if not math.isfinite(number):  # nan/inf parse as floats but are no interval
            raise ValueError(f"{value!r} is not a duration {_DURATION_HINT}")
        return number
    text = str(value).strip()
    match = _DURATION_RE.match(text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"{value!r} is not a duration {_DURATION_HINT}")
    return float(sum(int(g) * unit for g, unit in zip(match.groups(), _DURATION_UNITS) if g))


def read_yaml(path: str, origin: str) -> Any:
    """Parse one YAML file; ConfigError naming `origin` (and the line) on any problem.

    The single entry point for every YAML file the exporter reads: config file, provider
    list, tagging rules, web config. Limits on what a file may hold belong here.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"{origin}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{origin}: not UTF-8 text ({exc.reason})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{origin}{where}: {problem}") from None


_TYPE_WORDS = {"number": "a number", "integer": "an integer", "string": "a string",
               "boolean": "true or false", "array": "a list", "object": "a mapping",
               "null": "empty"}


def describe_schema_error(error: jsonschema.ValidationError, origin: str,
                          name: Callable[[Sequence[str]], str] | None = None,
                          hints: Mapping[str, str] | None = None) -> str:
    """One line for a jsonschema error, the same wording for every schema in the exporter.

    origin: the document ("config file F", "rules file F", "config file F: carbon.providers[0]").
    name: how the path to a field reads (default: origin + ": " + dotted path); the config
    file uses it to say "flag --carbon.pue" for a value that came from a flag.
    hints: extra words after "unknown key K" for keys people are known to try.
    """
    parts = [str(p) for p in error.absolute_path]
    field = name(parts) if name is not None else (
        f"{origin}: {'.'.join(parts)}" if parts else origin)
    validator = str(error.validator)
    expected: Any = error.validator_value  # typed loosely by jsonschema: depends on the keyword
    schema: Any = error.schema
    if validator == "additionalProperties":
        instance: Any = error.instance
        extra = sorted(str(k) for k in set(instance) - set(schema.get("properties", {})))
        hint = (hints or {}).get(extra[0], "")
        return f"{origin}: unknown key {'.'.join([*parts, extra[0]])}{hint}"
    if validator == "required":
        return f"{field}: {error.message.split(' ')[0]} is required"
    if validator == "type":
        wanted = [str(t) for t in (expected if isinstance(expected, list) else [expected])]
        if "object" in wanted and not parts:
            return f"{origin}: the file must hold a mapping, not {type(error.instance).__name__}"
        if wanted == ["object"] or wanted == ["object", "null"]:
            return f"{field} must be a mapping"
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in wanted if t != "null")
        return f"{field}: {error.instance!r} must be {words}"
    if validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        relation = {"minimum": "at least", "exclusiveMinimum": "greater than",
                    "maximum": "at most", "exclusiveMaximum": "less than"}[validator]
        bound = f"{expected:g}" if isinstance(expected, (int, float)) else str(expected)
        return f"{field}: {error.instance!r} must be {relation} {bound}"
    if validator == "enum":
        return f"{field}: {error.instance!r} must be one of {', '.join(map(str, expected))}"
    if validator == "pattern":
        return f"{field}: {error.instance!r} does not match {expected}"
    if validator in ("minLength", "minProperties", "minItems"):
        return f"{field}: {error.instance!r} must not be empty"
    return f"{field}: {error.message}"


def check_schema(validator: jsonschema.protocols.Validator, tree: Any, origin: str,
                 name: Callable[[Sequence[str]], str] | None = None,
                 hints: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError for the most relevant schema error in `tree`, if any."""
    import jsonschema

    error = jsonschema.exceptions.best_match(validator.iter_errors(tree))
    if error is not None:
        raise ConfigError(describe_schema_error(error, origin, name, hints))
