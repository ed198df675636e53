"""User-given YAML files (run configs, sweep files): a mapping, or one clear error naming the file.

In every mapping, at any depth, each key must be a non-empty string given once (plain YAML
loaders accept `2:` or `null:` as keys and keep the last value of a key given twice silently).
"""

from pathlib import Path

import yaml

from agpnet.errors import AgpnetError


class BadKey(yaml.YAMLError):
    """A mapping key that is not a non-empty string, or is given twice; `line` is 1-based."""

    def __init__(self, problem: str, line: int):
        super().__init__(f"line {line}: {problem}")
        self.problem, self.line = problem, line


class _CheckedKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader that raises BadKey for a key that is not a non-empty string or is
    given twice in one mapping (merge keys `<<` may still be overridden, as YAML intends)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_lines = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                if not isinstance(key, str) or not key:
                    raise BadKey(f"key {key!r}: expected a non-empty string (quote a name that YAML "
                                 "reads as a number, true/false or null)", line)
                if key in first_lines:
                    raise BadKey(f"key {key!r} was already given on line {first_lines[key]}; "
                                 "expected each key once", line)
                first_lines[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str):
    """yaml.safe_load that refuses keys other than non-empty strings and duplicate keys (BadKey)."""
    return yaml.load(text, Loader=_CheckedKeyLoader)  # a SafeLoader: plain data only


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict:
    """A YAML file that must hold a mapping; bad input raises AgpnetError naming the file."""
    path = Path(path)
    try:
        values = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgpnetError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AgpnetError(f"{path}: cannot read the {what} ({err.__class__.__name__}: {err}); "
                          "expected a YAML text file") from None
    except BadKey as err:
        raise AgpnetError(f"{path} line {err.line}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise AgpnetError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(values, dict):
        raise AgpnetError(f"{path}: expected {expected}")
    return values


def parse_yaml_value(text: str, where: str):
    """A value given on the command line (`--epochs 3`, `--set blocks=[3,9]`) parsed as YAML."""
    try:
        return load_yaml(text)
    except yaml.YAMLError as err:
        raise AgpnetError(f"{where}: {text!r} is not a valid value ({' '.join(str(err).split())})") from None
