"""Step one of the data flow: map intercepted flows to operations and enforce decisions.

Only this package imports mitmproxy; it never imports torch or any model code, so the proxy
process stays small and starts fast.
"""
