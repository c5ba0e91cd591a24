"""The node agent (``bpfdepot agent``): many instances loaded in one long-running process,
controlled over a Unix socket (``protocol``) and a watched manifests folder (``server``); each
instance is one ``loader.node.run`` on its own thread (``instances``)."""
