"""The `kv_store` example's environment: a key-value store per trajectory with two tools, `get` and `put`.

The task needs state across turns: read one key, write its value under another, answer with it. The
store's final state gives the environment's own reward (1 when the target key holds the right value),
which the config adds to the answer's exact match (`algorithm.rewards`, the `env` entry).
No `fork` method: APPO's branches get their parent's store by replaying the parent's calls into a fresh
instance, which is exact because the store is deterministic.
"""

from __future__ import annotations


class KeyValueStore:
    """A small key-value store; set up from the row's `initial` items."""

    def setup(self, initial: dict, target: dict) -> None:
        self.items = {str(k): str(v) for k, v in initial.items()}
        self.target = {str(k): str(v) for k, v in target.items()}

    def get(self, key: str) -> str:
        """Read the value stored under a key.

        Args:
            key: the key to read
        """
        return self.items.get(key.strip(), f"(no key {key.strip()!r})")

    def put(self, key: str, value: str) -> str:
        """Store a value under a key (replacing what was there).

        Args:
            key: the key to write
            value: the value to store
        """
        self.items[key.strip()] = value.strip()
        return f"stored {key.strip()}"

    def reward(self) -> float:
        """1.0 when every target key holds its target value at the end, else 0.0."""
        return float(all(self.items.get(k) == v for k, v in self.target.items()))
