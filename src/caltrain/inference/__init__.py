"""DeepEnclave serving: FrontNet (and in ternary mode the last layer) in the enclave, the rest on the host.

`split` says which blocks run where, `requests` is the request/answer format both ends share,
`enclave_side` the trusted calls, `serving` the host's registry and batching pipeline.
"""
