"""A conversation as a tree: every message has a parent, so an edited message or a regenerated reply is a new
branch beside the old one, and nothing said is ever lost.

:class:`ChatTree` is plain data (no I/O): the chat store (:mod:`influence_tui.core.store`) keeps one per chat,
front ends use it to show and switch alternatives. A :class:`~influence_tui.core.sessions.ChatSession`'s
``messages`` are always one path of its tree, from the first message to the :attr:`ChatTree.head`: the branch
shown, and the context sent to the model.

:meth:`ChatTree.adopt` is how a session's linear messages become branches: it follows the tree along the
messages as long as they match (same role, text and time) and adds the rest as new children. So a reply
regenerated after ``/retry`` or an edited message becomes an alternative of the old one without the session
knowing about trees.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from influence_tui.core.types import ChatMessage


def new_node_id() -> str:
    """A random message id (16 hex digits)."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Node:
    """One message in the tree."""

    id: str
    parent: str | None
    """None for a first message (a chat may have several: the first message edited)."""
    message: ChatMessage


@dataclass(frozen=True)
class Alternatives:
    """Where a message stands among its siblings: ``‹ position/count ›``."""

    position: int
    """1-based."""
    count: int

    @property
    def label(self) -> str:
        return f"‹ {self.position}/{self.count} ›"


@dataclass
class ChatTree:
    """The messages of one chat, and which branch is shown."""

    nodes: dict[str, Node] = field(default_factory=dict)
    children: dict[str | None, list[str]] = field(default_factory=dict)
    """Each parent's children, oldest first (``None``: the first messages)."""
    head: str | None = None
    """The last message of the branch shown (None: no message)."""
    chosen: dict[str | None, str] = field(default_factory=dict)
    """The child last shown under each parent: switching back to a branch shows it as it was left."""

    @classmethod
    def from_nodes(cls, nodes: Iterable[Node], head: str | None = None) -> ChatTree:
        """A tree of ``nodes`` given parents first (as they were added); ``head`` is the branch shown (default:
        the newest leaf). Off the branch shown, each message's chosen child is the one whose branch has the
        newest message: the branch the user was on last."""
        tree = cls()
        order: dict[str, int] = {}
        for number, node in enumerate(nodes):
            tree.add(node)
            order[node.id] = number
        newest = dict(order)  # the newest message in each message's branch
        for node_id in sorted(order, key=order.__getitem__, reverse=True):
            parent = tree.nodes[node_id].parent
            if parent is not None:
                newest[parent] = max(newest[parent], newest[node_id])
        for parent, children in tree.children.items():
            tree.chosen[parent] = max(children, key=newest.__getitem__)
        if head is not None and head in tree.nodes:
            tree.set_head(head)
        elif tree.nodes:
            tree.set_head(tree.leaf_under(None))
        return tree

    def __len__(self) -> int:
        return len(self.nodes)

    # -------------------------------------------------------------- changes

    def add(self, node: Node) -> Node:
        if node.parent is not None and node.parent not in self.nodes:
            raise ValueError(f"message {node.id} has an unknown parent {node.parent}")
        self.nodes[node.id] = node
        self.children.setdefault(node.parent, []).append(node.id)
        self.chosen[node.parent] = node.id
        return node

    def set_head(self, node_id: str | None) -> None:
        """Show the branch ending at ``node_id`` (it becomes the chosen child all the way up)."""
        self.head = node_id
        while node_id is not None:
            node = self.nodes[node_id]
            self.chosen[node.parent] = node_id
            node_id = node.parent

    def adopt(self, messages: Sequence[ChatMessage]) -> list[Node]:
        """Make ``messages`` the branch shown: follow the tree while they match, add the rest; return the nodes
        added (empty when every message was already there)."""
        parent: str | None = None
        added: list[Node] = []
        for message in messages:
            match = None if added else self._child_matching(parent, message)
            if match is None:
                match = self.add(Node(self._unused_id(), parent, message)).id
                added.append(self.nodes[match])
            parent = match
        self.set_head(parent)
        return added

    def _child_matching(self, parent: str | None, message: ChatMessage) -> str | None:
        for child in reversed(self.children.get(parent, [])):
            if self.nodes[child].message == message:
                return child
        return None

    def _unused_id(self) -> str:
        while True:
            node_id = new_node_id()
            if node_id not in self.nodes:
                return node_id

    def remove(self, node_id: str) -> list[str]:
        """Remove a message and everything under it; return the ids removed. The head moves up if it was there."""
        gone: list[str] = []
        stack = [node_id]
        while stack:
            current = stack.pop()
            gone.append(current)
            stack.extend(self.children.pop(current, []))
        parent = self.nodes[node_id].parent
        self.children[parent].remove(node_id)
        if not self.children[parent]:
            del self.children[parent]
            self.chosen.pop(parent, None)
        elif self.chosen.get(parent) == node_id:
            self.chosen[parent] = self.children[parent][-1]
        for current in gone:
            self.nodes.pop(current, None)
            self.chosen.pop(current, None)
        if self.head in gone:
            self.set_head(parent)
        return gone

    # -------------------------------------------------------------- views

    def path(self, head: str | None = None) -> list[Node]:
        """The branch ending at ``head`` (default: the branch shown), first message first."""
        node_id = self.head if head is None else head
        nodes: list[Node] = []
        while node_id is not None:
            node = self.nodes[node_id]
            nodes.append(node)
            node_id = node.parent
        nodes.reverse()
        return nodes

    def messages(self, head: str | None = None) -> list[ChatMessage]:
        return [node.message for node in self.path(head)]

    def leaf_under(self, node_id: str | None) -> str | None:
        """The end of the branch below ``node_id`` as it was last shown (the chosen child at every step)."""
        current = node_id
        while current in self.children:
            current = self.chosen.get(current) or self.children[current][-1]
        return current

    def siblings(self, node_id: str) -> list[str]:
        """The alternatives of a message, itself included, oldest first."""
        return list(self.children.get(self.nodes[node_id].parent, []))

    def alternatives(self, node_id: str) -> Alternatives:
        siblings = self.siblings(node_id)
        return Alternatives(siblings.index(node_id) + 1, len(siblings))

    def switch(self, node_id: str, step: int) -> str | None:
        """Show the alternative ``step`` places from ``node_id`` (-1 the one before, 1 the one after) with the
        branch under it as it was last shown; return the new head (None when there is no such alternative)."""
        siblings = self.siblings(node_id)
        position = siblings.index(node_id) + step
        if not 0 <= position < len(siblings):
            return None
        head = self.leaf_under(siblings[position])
        self.set_head(head)
        return head
