"""The graph of a torch.export archive (``models/model.json``), checked for the strings torch would run as code.

torch.export.load evaluates three kinds of strings from that JSON: symbolic shapes (``expr_str``, parsed by
``sympy.sympify``, which calls Python's ``eval``), node targets (``target``, resolved attribute by attribute
from the ``torch``, ``operator`` and ``math`` modules and then called when the graph runs) and pytree specs
(``in_spec``/``out_spec``, whose contexts may name modules to import). ``check`` lets through only what
torch.export.save writes for an ordinary model:

- an expression: integers, arithmetic and comparisons, symbol names, and calls of the sympy functions in
  FUNCTIONS, with a string only as a ``Symbol``'s name and keywords only as a ``Symbol``'s bool assumptions;
- a target: ``torch.ops.NAMESPACE.OP[.OVERLOAD]``, ``_operator.NAME``, ``math.NAME`` or ``torch.sym_NAME``,
  never a name with a double underscore;
- a spec: tuples, lists, dicts and leaves, a dict's keys plain strings or numbers.
"""

from __future__ import annotations

import ast
import builtins
import json
import re
from collections.abc import Iterator
from typing import Any

from nnmark._safetensors import parse_json
from nnmark.errors import ModelError

FUNCTIONS = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Max", "Min", "Abs", "Mod", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
    "And", "Or", "Not", "sqrt", "floor", "ceiling", "FloorDiv", "ModularIndexing", "Where", "PythonMod",
    "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow",
    "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
    "RoundDecimal", "ToFloat", "Identity",
})
"""The functions an expression may call: sympy's and torch.utils._sympy.functions' (what torch.export writes)."""
MAX_EXPRESSION = 10_000  # characters of one expression
MAX_CONSTANT = 2**63  # largest number in an expression
MAX_POWER = 64  # largest exponent in an expression
_TARGET = re.compile(r"torch\.ops\.[a-z_]\w*\.[A-Za-z_]\w*(\.[A-Za-z_]\w*)?|_operator\.\w+|math\.\w+|torch\.sym_\w+")
_SPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"})
_OPERATORS = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.operator, ast.unaryop, ast.cmpop,
              ast.boolop, ast.Load)


class _Refused(Exception):
    """Why a graph is refused (check adds the file's name)."""


def check(path: str, raw: bytes) -> None:
    """ModelError, naming ``path``, unless every expression, target and spec in the graph JSON ``raw`` is one
    torch can read without running code of the file's choosing (see the module)."""
    try:
        graph = parse_json(raw.decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ModelError(f"{path}: its graph (models/model.json) is not valid JSON") from None
    checks = {"expr_str": _check_expression, "target": _check_target, "in_spec": _check_spec,
              "out_spec": _check_spec}
    try:
        for key, value in _items(graph):
            if key in checks:
                checks[key](value)
    except _Refused as e:
        raise ModelError(f"{path}: its graph would make torch run code: {e}") from None


def declares_empty(tensor_meta: Any) -> bool:
    """Whether a serialised tensor's ``sizes`` (``[{"as_int": n}, ..]``) are non-negative integers, one of them 0."""
    try:
        sizes = [d["as_int"] for d in tensor_meta["sizes"]]
    except (KeyError, TypeError):
        return False
    return all(type(d) is int and d >= 0 for d in sizes) and 0 in sizes


def _items(obj: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of every object nested in ``obj``, without recursion."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield from item.items()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_target(target: Any) -> None:
    if not isinstance(target, str) or not _TARGET.fullmatch(target) or "__" in target:
        raise _Refused(f"node target {str(target)[:80]!r} is not an operator")


def _check_expression(expr: Any) -> None:
    """_Refused unless ``expr`` is a string of arithmetic over symbols and FUNCTIONS calls (see the module)."""
    try:
        tree = ast.parse(expr, mode="eval") if isinstance(expr, str) and len(expr) <= MAX_EXPRESSION else None
    except (SyntaxError, ValueError, RecursionError):
        tree = None
    nodes = list(ast.walk(tree)) if tree is not None else []
    names = {id(node.args[0]) for node in nodes if _is_symbol(node)}
    if not nodes or not all(_allowed(node, names) for node in nodes):
        raise _Refused(f"shape expression {str(expr)[:80]!r} is not arithmetic")


def _is_symbol(node: ast.AST) -> bool:
    """Whether ``node`` is ``Symbol('name', assumption=True, ..)``."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Symbol"
            and len(node.args) == 1 and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            and all(isinstance(k.value, ast.Constant) and type(k.value.value) is bool for k in node.keywords))


def _allowed(node: ast.AST, names: set[int]) -> bool:
    """Whether one node of an expression's syntax tree is allowed; ``names`` are the ids of the Symbol names."""
    if isinstance(node, ast.Call):
        function = node.func.id if isinstance(node.func, ast.Name) else None
        return function in FUNCTIONS and (_is_symbol(node) if function == "Symbol" else not node.keywords)
    if isinstance(node, ast.Name):
        return not node.id.startswith("_") and not hasattr(builtins, node.id)
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float, bool) and abs(node.value) <= MAX_CONSTANT or id(node) in names
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):  # 10**10**10 would not finish
        return isinstance(node.right, ast.Constant) and type(node.right.value) is int and node.right.value <= MAX_POWER
    return isinstance(node, (*_OPERATORS, ast.keyword))


def _check_spec(spec: Any) -> None:
    """_Refused unless ``spec`` is a pytree spec of tuples, lists, dicts and leaves whose dict keys are plain."""
    try:
        _, root = json.loads(spec)
        for node in _spec_nodes(root):
            if node["type"] not in _SPEC_TYPES or not _plain_context(node["context"]):
                raise _Refused(f"input/output spec of type {str(node['type'])[:80]!r} is not a plain container")
    except (ValueError, TypeError, KeyError, RecursionError):
        raise _Refused("an input/output spec is malformed") from None


def _spec_nodes(root: Any) -> Iterator[dict]:
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node["children_spec"])


def _plain_context(context: Any) -> bool:
    """A spec context of None, or JSON null or a list of strings/numbers (a dict's keys)."""
    if context is None:
        return True
    keys = json.loads(context) if isinstance(context, str) else context
    return keys is None or (isinstance(keys, list) and all(type(k) in (str, int, float) for k in keys))
