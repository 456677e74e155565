"""Code tools shipped with the worker. Every `BaseTool` subclass in this package is discovered."""
