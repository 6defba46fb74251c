#!/usr/bin/env python3
"""Fails when the library's layers are crossed: modules that import each other in a cycle, or a
bare protocol message-tag byte outside `src/protocol/`.

Layers must point one way: a file may use what lies below it, never what uses it. This reads
every `src/**/*.rs` of the library (test modules left out: they may reach anywhere), resolves
each `crate::` / `super::` / `self::` path to the file that defines the item (following a
parent module's `pub use` re-exports to the child that holds the item), and reports

  * cycles between files, and
  * cycles between top-level modules (`pool`, `upstream`, `ops`, ...),

each as one loop, e.g. `pool/mod.rs -> ops/metrics.rs -> pool/mod.rs`. A parent module
declaring its children (`mod x;`) is not an import; a child using its parent is.

A message tag means different things by direction (`b'E'` is Execute from a client and
ErrorResponse from a server), so code outside `src/protocol/` names tags through
`protocol::{frontend, backend}` instead of writing byte literals such as `b'Z'`.

Usage: python3 scripts/check-layers.py [SRC_DIR]   (default: src)
Exit status 1 when a layer is crossed, 0 otherwise.
"""

import re
import sys
from pathlib import Path

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
ROOT_FILE = "lib.rs"


def module_path(file: Path) -> tuple:
    """`src/pool/checkout.rs` -> ("pool", "checkout"); `src/pool/mod.rs` -> ("pool",)."""
    parts = list(file.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod" or parts == ["lib"]:
        parts = parts[:-1]
    return tuple(parts)


def strip_tests_and_comments(text: str) -> str:
    """Drops comments, string literals and `#[cfg(test)]` items (test modules)."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    out, i = [], 0
    for match in re.finditer(r"#\[cfg\(test\)\]", text):
        if match.start() < i:
            continue
        out.append(text[i : match.start()])
        # Skip the item: up to its matching closing brace, or its semicolon.
        j, depth = match.end(), 0
        while j < len(text):
            c = text[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif c == ";" and depth == 0:
                j += 1
                break
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def expand_use(tree: str) -> list:
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+", "", tree)
    depth, split = 0, None
    for k, c in enumerate(tree):
        if c == "{" and depth == 0:
            split = k
            break
        depth += c == "{"
        depth -= c == "}"
    if split is None:
        return [re.sub(r"\bas\w+$", "", tree)] if tree else []
    prefix, inner = tree[:split], tree[split + 1 : tree.rindex("}")]
    parts, depth, start = [], 0, 0
    for k, c in enumerate(inner):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(inner[start:k])
            start = k + 1
    parts.append(inner[start:])
    return [path for part in parts if part for path in expand_use(prefix + part)]


def absolute(path: str, current: tuple, is_dir_module: bool) -> tuple:
    """Resolves a `crate::`/`super::`/`self::` path against the module `current`."""
    segments = path.split("::")
    if segments[0] == "crate":
        return tuple(segments[1:])
    base = list(current)
    while segments and segments[0] in ("super", "self"):
        if segments.pop(0) == "super":
            base = base[:-1]
    return tuple(base + segments)


TAG_LITERAL = re.compile(r"\bb'[A-Za-z0-9]'")


def test_only_files(files: dict) -> set:
    """Files of modules declared under `#[cfg(test)]` (`mod tests;`): test code."""
    found = set()
    for mod, file in files.items():
        for name in re.findall(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", file.read_text()):
            found.add(mod + (name,))
    return found


def main() -> int:
    files = {module_path(f): f for f in SRC.rglob("*.rs") if f.name != "main.rs" and "bin" not in f.parts}
    for test_module in test_only_files(files):
        files.pop(test_module, None)
    texts = {mod: strip_tests_and_comments(f.read_text()) for mod, f in files.items()}

    # `pub use child::{A, B}` in a parent: A and B live in the child's file.
    reexports = {}
    for mod, text in texts.items():
        for tree in re.findall(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
            for path in expand_use(tree):
                target = absolute(path if path.startswith(("crate", "super", "self")) else "self::" + path, mod, True)
                reexports[mod + (target[-1],)] = target

    def defining_file(path: tuple):
        """The module file that defines `path`, following re-exports."""
        seen = set()
        while path in reexports and path not in seen:
            seen.add(path)
            path = reexports[path]
        for k in range(len(path), 0, -1):
            if path[:k] in files:
                return path[:k]
        return None

    edges = {mod: set() for mod in files}
    for mod, text in texts.items():
        paths = []
        for tree in re.findall(r"\buse\s+([^;]+);", text):
            for path in expand_use(tree):
                if path.startswith(("crate::", "super::", "self::")):
                    paths.append(path)
        paths += re.findall(r"(?<![\w:])((?:crate|super)(?:::\w+)+)", text)
        for path in paths:
            target = defining_file(absolute(path, mod, files[mod].name == "mod.rs"))
            # A module's own children are its parts, not its dependencies.
            if target is None or target == mod or target[: len(mod)] == mod:
                continue
            edges[mod].add(target)

    def name(mod: tuple) -> str:
        return str(files[mod].relative_to(SRC))

    def top(mod: tuple) -> str:
        return mod[0] if mod else "lib"

    top_edges = {}
    for mod, targets in edges.items():
        for target in targets:
            if top(mod) != top(target) and top(mod) != "lib":
                top_edges.setdefault(top(mod), set()).add(top(target))

    failures = report("file", {name(m): {name(t) for t in ts} for m, ts in edges.items()})
    failures += report("top-level module", top_edges)
    for mod, text in sorted(texts.items()):
        if top(mod) == "protocol":
            continue
        for literal in sorted(set(TAG_LITERAL.findall(text))):
            failures += 1
            print(f"{name(mod)}: bare byte literal {literal}: name it through protocol::{{frontend, backend}}", file=sys.stderr)
    if failures:
        print(f"{failures} layer violation(s)", file=sys.stderr)
        return 1
    print(f"no import cycles among {len(files)} files, no bare message tags outside src/protocol/")
    return 0


def report(kind: str, graph: dict) -> int:
    """Prints one loop per strongly connected component with more than one node."""
    count = 0
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue
        count += 1
        loop = shortest_loop(graph, sorted(component)[0], component)
        print(f"{kind} cycle: {' -> '.join(loop)}", file=sys.stderr)
        if len(component) > len(loop) - 1:
            print(f"  (and more among: {', '.join(sorted(component))})", file=sys.stderr)
    return count


def strongly_connected(graph: dict) -> list:
    """Tarjan's algorithm, iteratively."""
    nodes = sorted(set(graph) | {t for ts in graph.values() for t in ts})
    index, low, on_stack, stack, result, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    result.append(component)
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return result


def shortest_loop(graph: dict, start: str, component: set) -> list:
    """The shortest path from `start` back to itself inside `component`."""
    previous, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return list(reversed(path)) + [start]
                if child in component and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [start]


if __name__ == "__main__":
    sys.exit(main())
