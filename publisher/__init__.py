"""The cluster-level node topology publisher: ``application-grid-wrapper publish-topology``.

One per cluster (a Deployment with Lease-based leader election; only the leader writes). It
watches Nodes (their metadata) and Services, asks ``filters/`` which node label keys the
Services' policies read, and keeps each node's tracked labels in the bucket ConfigMaps that
``kubeapi.node_topology`` specifies, so that wrappers watch a few small objects that change
rarely instead of every Node and its status heartbeats.

A program beside ``wrapper/`` (neither imports the other; ``wrapper.cli`` only dispatches the
subcommand here): ``options`` (flags), ``cli`` (start and stop), ``leader`` (the Lease),
``informer`` (list and watch), ``sources`` (what the informers keep), ``plan`` (the buckets to
write, pure) and ``writer`` (the publisher's loop, which writes them).
"""
