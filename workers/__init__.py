"""Code that runs inside a worker process: models, the CAM engine, per-image metrics, the Ray actor.

Only :mod:`workers.actor` knows about Ray; everything else is plain torch so it can be tested and
benchmarked without a cluster.
"""
