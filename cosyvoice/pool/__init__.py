"""The engine pool: engines as Ray Serve replicas, and the edge-side engine that streams from them.

Ray is an optional extra (``pip install 'cosyvoice-gateway[ray]'``): import the submodules, not this
package, where Ray may be missing. Like the rest of :mod:`cosyvoice`, nothing here knows of HTTP.
"""
