"""``MemoryMixin``: ``self.store_memory`` / ``self.retrieve_memory`` for any agent class."""

from __future__ import annotations

from typing import Any

from .memory import AgentMemory

__all__ = ["MemoryMixin"]


class MemoryMixin:
    """Gives an agent class the memory calls of the migration guide, on the backend its
    ``self.config`` selects (an :class:`memshift.AgentConfig` or any object with its
    attributes)::

        class EnhancedAgentBase(MemoryMixin):
            def __init__(self, config):
                self.config = config

        await agent.store_memory("key", data)
        result = await agent.retrieve_memory("key")

    The memory is opened at the first call and kept on the instance; ``await
    self.close_memory()`` closes it. Changing ``self.config`` afterwards takes effect
    after ``close_memory``.
    """

    config: Any

    async def agent_memory(self) -> AgentMemory:
        """The agent's :class:`memshift.AgentMemory`, opened at the first call."""
        memory: AgentMemory | None = self.__dict__.get("_memshift_memory")
        if memory is not None and not memory.closed:
            return memory
        opened = await AgentMemory.open(self.config)
        # Two tasks may open it at once: the first to finish is kept.
        kept: AgentMemory | None = self.__dict__.get("_memshift_memory")
        if kept is not None and not kept.closed:
            await opened.close()
            return kept
        self.__dict__["_memshift_memory"] = opened
        return opened

    async def store_memory(self, key: str, data: Any) -> None:
        """Stores ``data`` under ``key``, replacing what was there."""
        await (await self.agent_memory()).store_memory(key, data)

    async def retrieve_memory(self, key: str) -> Any:
        """The value stored under ``key``, or ``None``."""
        return await (await self.agent_memory()).retrieve_memory(key)

    async def delete_memory(self, key: str) -> bool:
        """Deletes ``key``; ``True`` when it was there."""
        return await (await self.agent_memory()).delete_memory(key)

    async def close_memory(self) -> None:
        """Closes the agent's memory, if it was opened."""
        memory: AgentMemory | None = self.__dict__.pop("_memshift_memory", None)
        if memory is not None:
            await memory.close()
