"""The fast path of reply validation.

jsonschema takes ~50 µs for a small object. For schemas made only of the common keywords
below, a checker of plain closures says "valid" in a few µs. It is conservative: True only
when jsonschema would find no error; on False (or any other keyword) jsonschema decides and
words the problem, so the verdicts and messages are always jsonschema's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from batcher.structured.schema import pointer

Predicate = Callable[[Any], bool]

_FAST_DRAFTS = frozenset(
    {"Draft6Validator", "Draft7Validator", "Draft201909Validator", "Draft202012Validator"}
)  # by name: jsonschema is imported lazily
_NO_OPS = frozenset({"format"})  # jsonschema asserts no format without a format checker
_JSON_TYPES = {
    "string": (str,),
    "integer": (int,),  # an integral float goes to jsonschema
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


class _Unsupported(Exception):
    """A keyword or form the fast path does not handle."""


def fast_checker(schema: dict, cls: type) -> Predicate | None:
    """A conservative validity test for `schema`, or None when it uses other keywords."""
    if cls.__module__ != "jsonschema.validators" or cls.__name__ not in _FAST_DRAFTS:
        return None
    try:
        return _FastCompiler(schema, frozenset(cls.VALIDATORS)).compile(schema)
    except (_Unsupported, re.error, TypeError):  # TypeError: a schema load_schema would refuse
        return None


class _FastCompiler:
    def __init__(self, root: dict, keywords: frozenset[str]) -> None:
        self.root = root
        self.keywords = keywords  # the keywords jsonschema acts on; it ignores any other
        self.refs: dict[str, Predicate] = {}

    def compile(self, node: Any) -> Predicate:
        if node is True or node is False:
            return _always if node else _never
        if not isinstance(node, dict) or (node is not self.root and "$id" in node):
            raise _Unsupported
        tests = [self.keyword(key, value, node) for key, value in node.items() if self._acts(key)]
        return _all_of([t for t in tests if t is not _always])

    def _acts(self, key: str) -> bool:
        return key in self.keywords and key not in _NO_OPS

    def keyword(self, key: str, value: Any, node: dict) -> Predicate:
        build = _KEYWORD_BUILDERS.get(key)
        if build is None:
            raise _Unsupported(key)
        return build(self, value, node)

    def ref(self, ref: Any) -> Predicate:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise _Unsupported("$ref")
        if ref not in self.refs:
            cell: list[Predicate] = []
            self.refs[ref] = lambda x: cell[0](x)  # late-bound: refs may recurse
            target = pointer(self.root, ref)
            if target is None:
                raise _Unsupported("$ref")
            cell.append(self.compile(target))
        return self.refs[ref]


def _always(x: Any) -> bool:
    return True


def _never(x: Any) -> bool:
    return False


def _all_of(tests: list[Predicate]) -> Predicate:
    if not tests:
        return _always
    if len(tests) == 1:
        return tests[0]

    return lambda x: all(test(x) for test in tests)


def _type_test(c: _FastCompiler, kind: Any, node: dict) -> Predicate:
    kinds = kind if isinstance(kind, list) else [kind]
    if not all(isinstance(k, str) and k in _JSON_TYPES for k in kinds):
        raise _Unsupported("type")
    allowed = frozenset(t for k in kinds for t in _JSON_TYPES[k])
    return lambda x: type(x) in allowed


def _enum_test(c: _FastCompiler, values: Any, node: dict) -> Predicate:
    strings = frozenset(v for v in values if isinstance(v, str))
    others = [v for v in values if not isinstance(v, str)]
    if not others:
        return lambda x: type(x) is str and x in strings
    return lambda x: x in strings if type(x) is str else _in_others(x, others)


def _const_test(c: _FastCompiler, value: Any, node: dict) -> Predicate:
    return _enum_test(c, [value], node)


def _in_others(x: Any, others: list[Any]) -> bool:
    """jsonschema's equality for scalars (True is not 1); containers go to jsonschema."""
    if x is None or x is True or x is False:
        return any(v is x for v in others)
    if type(x) is int or type(x) is float:
        return any(type(v) in (int, float) and v == x for v in others)
    return False


def _properties_test(c: _FastCompiler, properties: dict, node: dict) -> Predicate:
    tests = {name: c.compile(sub) for name, sub in properties.items()}
    extra = node.get("additionalProperties", True)
    if "patternProperties" in node:
        raise _Unsupported("patternProperties")
    other = None if extra is True else c.compile(extra) if extra is not False else False

    def check(x: Any) -> bool:
        if not isinstance(x, dict):
            return True
        for key, value in x.items():
            test = tests.get(key)
            if test is not None:
                if not test(value):
                    return False
            elif other is False or (other is not None and not other(value)):
                return False
        return True

    return check


def _additional_test(c: _FastCompiler, extra: Any, node: dict) -> Predicate:
    if "properties" in node:
        return _always  # checked with the properties
    return _properties_test(c, {}, node)


def _required_test(c: _FastCompiler, names: list, node: dict) -> Predicate:
    return lambda x: not isinstance(x, dict) or all(n in x for n in names)


def _items_test(c: _FastCompiler, items: Any, node: dict) -> Predicate:
    if not isinstance(items, (dict, bool)) or "prefixItems" in node:
        raise _Unsupported("items")
    if items is False:
        return lambda x: not isinstance(x, list) or not x
    test = c.compile(items)
    return lambda x: not isinstance(x, list) or all(test(v) for v in x)


def _bound_test(kind: type | tuple[type, ...], size: Callable, compare: Callable) -> Callable:
    def build(c: _FastCompiler, limit: Any, node: dict) -> Predicate:
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise _Unsupported("bound")  # e.g. draft 4's boolean exclusiveMaximum
        return lambda x: not isinstance(x, kind) or compare(size(x), limit)

    return build


def _pattern_test(c: _FastCompiler, pattern: str, node: dict) -> Predicate:
    search = re.compile(pattern).search
    return lambda x: not isinstance(x, str) or search(x) is not None


def _unique_test(c: _FastCompiler, unique: Any, node: dict) -> Predicate:
    if not unique:
        return _always
    return lambda x: not isinstance(x, list) or _distinct_strings(x)


def _distinct_strings(x: list) -> bool:
    """True when every item is a string, each once; anything else goes to jsonschema."""
    return all(type(v) is str for v in x) and len(set(x)) == len(x)


def _any_of_test(c: _FastCompiler, branches: list, node: dict) -> Predicate:
    tests = [c.compile(b) for b in branches]
    return lambda x: any(t(x) for t in tests)


def _all_of_test(c: _FastCompiler, branches: list, node: dict) -> Predicate:
    return _all_of([c.compile(b) for b in branches])


def _ref_test(c: _FastCompiler, ref: Any, node: dict) -> Predicate:
    return c.ref(ref)


def _same(x: Any) -> Any:
    return x


_NUMBER = (int, float)
_KEYWORD_BUILDERS: dict[str, Callable[[_FastCompiler, Any, dict], Predicate]] = {
    "type": _type_test,
    "enum": _enum_test,
    "const": _const_test,
    "properties": _properties_test,
    "additionalProperties": _additional_test,
    "required": _required_test,
    "items": _items_test,
    "pattern": _pattern_test,
    "uniqueItems": _unique_test,
    "anyOf": _any_of_test,
    "allOf": _all_of_test,
    "$ref": _ref_test,
    "minimum": _bound_test(_NUMBER, _same, lambda v, n: v >= n),
    "maximum": _bound_test(_NUMBER, _same, lambda v, n: v <= n),
    "exclusiveMinimum": _bound_test(_NUMBER, _same, lambda v, n: v > n),
    "exclusiveMaximum": _bound_test(_NUMBER, _same, lambda v, n: v < n),
    "minLength": _bound_test(str, len, lambda v, n: v >= n),
    "maxLength": _bound_test(str, len, lambda v, n: v <= n),
    "minItems": _bound_test(list, len, lambda v, n: v >= n),
    "maxItems": _bound_test(list, len, lambda v, n: v <= n),
    "minProperties": _bound_test(dict, len, lambda v, n: v >= n),
    "maxProperties": _bound_test(dict, len, lambda v, n: v <= n),
}
