"""User-given YAML files (run configs, sweep files): a mapping, or one clear error naming the file."""

from pathlib import Path

import yaml

from agpnet.errors import AgpnetError


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict:
    """A YAML file that must hold a mapping; bad input raises AgpnetError naming the file."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgpnetError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AgpnetError(f"{path}: cannot read the {what} ({err.__class__.__name__}: {err}); expected a YAML text file") from None
    except yaml.YAMLError as err:
        raise AgpnetError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(values, dict):
        raise AgpnetError(f"{path}: expected {expected}")
    return values


def parse_yaml_value(text: str, where: str):
    """A value given on the command line (`--epochs 3`, `--set blocks=[3,9]`) parsed as YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise AgpnetError(f"{where}: {text!r} is not a valid value ({' '.join(str(err).split())})") from None
