from persona_axes.cli.main import main

__all__ = ["main"]
