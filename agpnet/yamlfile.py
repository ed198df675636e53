"""User-given YAML files (run configs, sweep files): a mapping, or one clear error naming the file.

A key given twice in one mapping is an error (plain YAML loaders keep the last value silently).
"""

from pathlib import Path

import yaml

from agpnet.errors import AgpnetError


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key, line: int, first_line: int):
        super().__init__(f"key {key!r} on line {line} was already given on line {first_line}")
        self.key, self.line, self.first_line = key, line, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader that raises DuplicateKey for a key given twice in one mapping
    (merge keys `<<` may still be overridden, as YAML intends)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_lines = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=deep), key_node.start_mark.line + 1
                try:
                    if key in first_lines:
                        raise DuplicateKey(key, line, first_lines[key])
                    first_lines[key] = line
                except TypeError:  # an unhashable key: the base loader names it
                    continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str):
    """yaml.safe_load that refuses duplicate keys (DuplicateKey)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only


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
    except DuplicateKey as err:
        raise AgpnetError(f"{path} line {err.line}: key {err.key!r} was already given "
                          f"on line {err.first_line}; expected each key once") from None
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
