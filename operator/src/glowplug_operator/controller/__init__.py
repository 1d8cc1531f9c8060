"""The controller machinery: watch streams feed a store and a work queue; reconcile loops take
keys off the queue and converge each ModelServer, writing to the API only on a difference."""
