"""`kubectl glowplug`: a kubectl plugin (the `kubectl-glowplug` console script) that shows a
ModelServer's conditions, cold start and flag history, asks for a flag retry, and explains the
rollback decisions. `render` builds the text (pure); `cli` reads the objects through kubectl."""
