"""Search mechanisms: sandboxed plugins the inner loop calls at fixed points.

- `interface`: the hooks a mechanism may define; `wire`: the JSON shapes as types;
- `sdk`: helpers mechanism code may import (shipped into the sandbox);
- `runtime.MechanismSet`: the active mechanisms of a run, one sandbox session each;
- `records`: what every hook call did, and `summarize` (proof of injection);
- `gates`: static check -> sandboxed contract test -> activation;
- `library`: the built-in mechanisms, loaded like generated ones.
"""
