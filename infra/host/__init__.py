"""The hypervisor host: the libvirt connection, domain XML, golden images, 127.0.0.1 ports,
the network guard, file locks and root-only files.

It knows nothing of guests' contents; it may import infra's top-level modules (errors,
settings, names) and the store, for the ports it reserves.
"""
