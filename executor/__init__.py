"""The stagewise executor: ``from stagewise.executor import App`` to write an app."""

from stagewise.executor.app import App, Ctx

__all__ = ["App", "Ctx"]
