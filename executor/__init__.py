"""The stagewise executor: ``from executor import App`` to write an app."""

from executor.app import App, Ctx

__all__ = ["App", "Ctx"]
