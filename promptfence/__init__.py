"""PromptFence: the shared core types, configuration and command line.

Importing this package is cheap: it loads no proxy, model or database code.
"""

__version__ = "0.1.0"
