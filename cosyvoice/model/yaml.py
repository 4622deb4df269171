"""Read CosyVoice's hyperpyyaml configs without importing any upstream class.

The model directories describe their networks with hyperpyyaml tags
(``!new:pkg.Class``, ``!name:pkg.func``, ``!apply:func``, ``!ref <key>``).
Executing them would import the upstream package; instead each tagged value
becomes a neutral :class:`Tagged` record, ``!ref`` is resolved (including
arithmetic such as ``<chunk_size> * <token_mel_ratio>``) and the loader maps
the few entries it needs onto its own modules.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Tagged:
    """A ``!new:``, ``!name:`` or ``!apply:`` value: what it names and the arguments it carries."""

    kind: str  # "new", "name" or "apply"
    target: str  # dotted path, e.g. "cosyvoice.llm.llm.Qwen2LM"
    kwargs: dict[str, Any] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)

    @property
    def class_name(self) -> str:
        return self.target.rsplit(".", 1)[-1]


@dataclass
class _Ref:
    expression: str


class _Loader(yaml.SafeLoader):
    """A SafeLoader that keeps hyperpyyaml tags as data."""


def _tagged(kind: str):
    def construct(loader: _Loader, suffix: str, node: yaml.Node) -> Tagged:
        if isinstance(node, yaml.MappingNode):
            return Tagged(kind, suffix, kwargs=loader.construct_mapping(node, deep=True))
        if isinstance(node, yaml.SequenceNode):
            return Tagged(kind, suffix, args=loader.construct_sequence(node, deep=True))
        value = loader.construct_scalar(node)
        return Tagged(kind, suffix, args=[value] if value not in ("", None) else [])

    return construct


for _kind in ("new", "name", "apply"):
    _Loader.add_multi_constructor(f"!{_kind}:", _tagged(_kind))
_Loader.add_constructor("!ref", lambda loader, node: _Ref(loader.construct_scalar(node)))
# hyperpyyaml's other tags (!copy, !tuple, !include) do not occur in model configs.

_REF = re.compile(r"<([^<>]+)>")
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


class ConfigError(ValueError):
    """The model config cannot be read or lacks something the engine needs."""


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse ``path`` into plain data and :class:`Tagged` records, with every ``!ref`` resolved."""
    try:
        raw = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw.update(overrides or {})
    resolver = _Resolver(raw, path)
    return {key: resolver.resolve(value) for key, value in raw.items()}


class _Resolver:
    def __init__(self, root: dict[str, Any], path: Path) -> None:
        self.root = root
        self.path = path
        self.active: set[str] = set()

    def resolve(self, value: Any) -> Any:
        if isinstance(value, _Ref):
            return self.reference(value.expression)
        if isinstance(value, Tagged):
            value.kwargs = {k: self.resolve(v) for k, v in value.kwargs.items()}
            value.args = [self.resolve(v) for v in value.args]
            return value
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value

    def lookup(self, key: str) -> Any:
        if key in self.active:
            raise ConfigError(f"{self.path}: circular !ref <{key}>")
        if key not in self.root:
            raise ConfigError(f"{self.path}: !ref names a missing key <{key}>")
        self.active.add(key)
        try:
            self.root[key] = self.resolve(self.root[key])
        finally:
            self.active.discard(key)
        return self.root[key]

    def reference(self, expression: str) -> Any:
        expression = expression.strip()
        whole = _REF.fullmatch(expression)
        if whole:
            return self.lookup(whole.group(1).strip())
        values = {}

        def substitute(match: re.Match[str]) -> str:
            name = f"_v{len(values)}"
            values[name] = self.lookup(match.group(1).strip())
            return name

        text = _REF.sub(substitute, expression)
        try:
            return _evaluate(ast.parse(text, mode="eval").body, values)
        except (SyntaxError, ValueError, TypeError):
            return _REF.sub(lambda m: str(self.lookup(m.group(1).strip())), expression)


def _evaluate(node: ast.AST, values: dict[str, Any]) -> Any:
    """Arithmetic over numbers and resolved references, nothing else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.Name) and node.id in values:
        return values[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, values)
    raise ValueError("not arithmetic")
