"""What every settings reader shares, with no dependency inside the project: the error type,
durations, the one YAML reader and the one jsonschema error formatter.

config, the provider list, tagging rules and the web config file all read YAML through
read_yaml() and word schema errors through describe_schema_error(), so the same mistake
reads the same wherever it is made. Modules anywhere in the exporter import ConfigError
from here, so nothing needs exporter.config just to raise one (no import cycles).
"""

from __future__ import annotations

import functools
import math
import os
import re
import stat
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:  # jsonschema is imported only where a schema is checked
    import jsonschema


class ConfigError(ValueError):
    """A bad setting; the message is one line that names the field."""


_NUMBER = r"(\d+(?:\.\d+)?)"  # 0.5s as node_exporter (Go's time.ParseDuration) takes it
_DURATION_RE = re.compile(
    rf"^(?:{_NUMBER}y)?(?:{_NUMBER}w)?(?:{_NUMBER}d)?(?:{_NUMBER}h)?(?:{_NUMBER}m)?"
    rf"(?:{_NUMBER}s)?(?:{_NUMBER}ms)?$"
)
_DURATION_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
_DURATION_HINT = "(use e.g. 500ms, 1s, 1m30s or 0.5)"


def parse_duration(value: Any) -> float:
    """Seconds from a Prometheus duration ('500ms', '1m30s') or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{shown(value)} is not a duration")
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
            raise ValueError(f"{shown(value)} is not a duration {_DURATION_HINT}")
        return number
    text = str(value).strip()
    match = _DURATION_RE.match(text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"{shown(value)} is not a duration {_DURATION_HINT}")
    return float(sum(float(g) * unit for g, unit in zip(match.groups(), _DURATION_UNITS) if g))


SHOWN_CHARS = 60
# Grid intensity above this is no grid on Earth (coal alone is ~1,000 g/kWh): the cap for
# every provider's value and for the static setting alike.
MAX_GRAMS_PER_KWH = 2000.0


def shown(value: Any) -> str:
    """repr() of a value from a file, flag or environment, cut short: an error message
    never echoes unbounded input (a megabyte string, an alias bomb's expansion)."""
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'} of {len(value)}"
    text = repr(value) if isinstance(value, (str, int, float, bool)) or value is None \
        else f"a {type(value).__name__}"
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


# What a settings file may be. Real ones are a few KiB with a handful of levels and no or
# few aliases; the bounds stop a 50 MB file, a FIFO, a billion-laughs alias bomb or a
# 10,000-deep nesting before they cost memory, time or a traceback.
MAX_FILE_BYTES = 256 * 1024
MAX_DEPTH = 32  # nested mappings and lists
MAX_NODES = 100_000  # nodes of the document with every alias expanded


@functools.cache
def _bounded_loader() -> type:
    """A yaml.SafeLoader that refuses duplicate keys and documents too deep or too big once
    aliases are expanded, counting while it composes (before anything is built)."""
    import yaml

    class TooMuch(yaml.YAMLError):
        pass

    class BoundedLoader(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.depth = 0
            self.nodes = 0  # expanded
            self.weight: dict[int, int] = {}  # id(node) -> its expanded size

        def _count(self, more: int) -> None:
            self.nodes += more
            if self.nodes > MAX_NODES:
                raise TooMuch(f"more than {MAX_NODES:,} values once aliases are expanded "
                              "(an alias bomb?)")

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                anchor = self.peek_event().anchor
                if anchor in self.anchors:
                    self._count(self.weight.get(id(self.anchors[anchor]), 1))
                return super().compose_node(parent, index)
            self.depth += 1
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise TooMuch(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
            before = self.nodes
            self._count(1)
            node = super().compose_node(parent, index)
            self.depth -= 1
            self.weight[id(node)] = self.nodes - before
            return node

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # << merges may override on purpose
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:
                    continue  # an unhashable key: the base class says so
                if first != key_node.start_mark.line + 1:
                    raise TooMuch(f"line {key_node.start_mark.line + 1}: duplicate key "
                                  f"{shown(key)} (first on line {first})")
            return super().construct_mapping(node, deep)

    BoundedLoader.TooMuch = TooMuch  # type: ignore[attr-defined]
    return BoundedLoader


def read_text(path: str, origin: str, limit: int = MAX_FILE_BYTES) -> str:
    """A settings file's text: a regular file of at most `limit` bytes of UTF-8 (a BOM is
    allowed). Opened without blocking, so a FIFO named as the file is refused, not waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(f"{origin}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{origin}: not a regular file")
        if info.st_size > limit:
            raise ConfigError(f"{origin}: {info.st_size:,} bytes; a settings file may have at "
                              f"most {limit:,}")
        data = os.read(fd, limit + 1)
    except OSError as exc:
        raise ConfigError(f"{origin}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # grew while read
        raise ConfigError(f"{origin}: more than {limit:,} bytes")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:4096]:
        raise ConfigError(f"{origin}: not UTF-8 text (UTF-16 or binary)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{origin}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line "
                          f"{line})") from None


def read_yaml(path: str, origin: str) -> Any:
    """Parse one YAML file; ConfigError naming `origin` (and the line) on any problem.

    The single entry point for every YAML file the exporter reads: config file, provider
    list, tagging rules, web config. The limits on what a file may hold are here: size,
    encoding, a regular file, nesting depth, alias expansion, duplicate keys.
    """
    import yaml

    text = read_text(path, origin)
    loader = _bounded_loader()(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        if isinstance(exc, loader.TooMuch):
            raise ConfigError(f"{origin}: {exc}") from None
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{origin}{where}: {str(problem)[:200]}") from None
    except RecursionError:  # a nesting the depth bound did not see (e.g. in a flow scalar)
        raise ConfigError(f"{origin}: nested too deeply") from None
    finally:
        loader.dispose()


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
        return f"{field}: {shown(error.instance)} must be {words}"
    if validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        relation = {"minimum": "at least", "exclusiveMinimum": "greater than",
                    "maximum": "at most", "exclusiveMaximum": "less than"}[validator]
        bound = f"{expected:g}" if isinstance(expected, (int, float)) else str(expected)
        return f"{field}: {shown(error.instance)} must be {relation} {bound}"
    if validator == "enum":
        return f"{field}: {shown(error.instance)} must be one of {', '.join(map(str, expected))}"
    if validator == "pattern":
        return f"{field}: {shown(error.instance)} does not match {expected}"
    if validator in ("minLength", "minProperties", "minItems"):
        return f"{field}: {shown(error.instance)} must not be empty"
    return f"{field}: {error.message}"


def check_schema(validator: jsonschema.protocols.Validator, tree: Any, origin: str,
                 name: Callable[[Sequence[str]], str] | None = None,
                 hints: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError for the most relevant schema error in `tree`, if any."""
    import jsonschema

    error = jsonschema.exceptions.best_match(validator.iter_errors(tree))
    if error is not None:
        raise ConfigError(describe_schema_error(error, origin, name, hints))
