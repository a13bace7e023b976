"""A chat as a tree of messages, so that editing an earlier question or regenerating a reply keeps what was there.

Each message (a node) has an `id`, unique in its chat, and a `parent` (None: a first message). The page shows, and the
model reads, one path: from a first message down to the shown leaf. A new message becomes a child of the path's last
one; an edit or a regeneration starts a sibling beside the message it replaces, so the old branch stays in the tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Node = dict[str, Any]


def linked(messages: Sequence[dict[str, Any]]) -> list[Node]:
    """Copies of `messages` as nodes: kept as they are when they carry ids, else chained one after another (a chat
    saved before branches existed, or imported from an app without them)."""
    nodes = [dict(m) for m in messages]
    if all("id" in n for n in nodes):
        return nodes
    if any("id" in n for n in nodes):
        raise ValueError("either every message has an id and a parent, or none has")
    for position, node in enumerate(nodes):
        node["id"], node["parent"] = position, position - 1 if position else None
    return nodes


def path_to(nodes: Sequence[Node], leaf: int | None) -> list[Node]:
    """The nodes from a first message down to `leaf` (None: an empty chat), the very objects in `nodes`."""
    by_id = {node["id"]: node for node in nodes}
    path: list[Node] = []
    current = leaf
    while current is not None:
        if current not in by_id or len(path) > len(nodes):
            raise ValueError(f"message {current} is not in this chat's tree (or the tree has a cycle)")
        path.append(by_id[current])
        current = by_id[current]["parent"]
    return path[::-1]


def leaf_of(path: Sequence[Node]) -> int | None:
    return path[-1]["id"] if path else None


def append(nodes: list[Node], path: list[Node], message: dict[str, Any]) -> Node:
    """`message` itself (the page streams into it) as a child of the path's last node, added to both lists."""
    message["id"] = max((node["id"] for node in nodes), default=-1) + 1
    message["parent"] = leaf_of(path)
    nodes.append(message)
    path.append(message)
    return message


def siblings(nodes: Sequence[Node], node: Node) -> list[Node]:
    """The versions of a message: every node with its parent, oldest first (itself included)."""
    return sorted((n for n in nodes if n["parent"] == node["parent"]), key=lambda n: n["id"])


def newest_leaf(nodes: Sequence[Node], node: Node) -> Node:
    """Where a branch ends: down from `node`, always through the newest child."""
    children: dict[int, Node] = {}
    for n in nodes:
        if n["parent"] is not None and (n["parent"] not in children or n["id"] > children[n["parent"]]["id"]):
            children[n["parent"]] = n
    for _ in range(len(nodes)):
        if node["id"] not in children:
            break
        node = children[node["id"]]
    return node


def switched(nodes: Sequence[Node], path: Sequence[Node], index: int, step: int) -> list[Node]:
    """The path shown after ‹ (step -1) or › (+1) under the message at `index`: its neighbouring version, down to
    where that branch ends. Past the first or last version, the path stays as it is."""
    versions = siblings(nodes, path[index])
    position = next(i for i, n in enumerate(versions) if n["id"] == path[index]["id"]) + step
    if not 0 <= position < len(versions):
        return list(path)
    return path_to(nodes, newest_leaf(nodes, versions[position])["id"])


def version_of(nodes: Sequence[Node], node: Node) -> tuple[int, int]:
    """(n, of): the message is version n of `of` (1-based), for ‹ n / of ›."""
    versions = siblings(nodes, node)
    return next(i for i, n in enumerate(versions) if n["id"] == node["id"]) + 1, len(versions)
