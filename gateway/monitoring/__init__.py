"""Model monitoring: what the gateway learns about the data flowing through a route.

One module per concern; import names from the module that owns them (there are no re-exports here,
so `gateway.baseline` can import the binnings without an import cycle):

- `gateway.monitoring.pointer`: JSON pointers with `*`, compiled once per config.
- `gateway.monitoring.bins`: how a value becomes a histogram bin (edges, categories, log-octaves).
- `gateway.monitoring.divergence`: PSI and Jensen-Shannon divergence between two histograms.
- `gateway.monitoring.window`: a ring of time slots, the windowing every recorder here uses.
- `gateway.monitoring.book`: `MonitorBook`, the per route x backend histograms and drift states.
- `gateway.monitoring.verdict`: `evaluate`, the canary analysis verdict from two backends' windows.

`gateway.baseline`, `gateway.feedback` and `gateway.slo` sit next to this package.
"""
