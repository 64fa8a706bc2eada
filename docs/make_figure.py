"""Re-draw docs/persona_map.png (the README's figure) from the shipped SmolLM2 vectors.

    .venv/bin/python docs/make_figure.py            # writes docs/persona_map.html
    chromium --headless --no-sandbox --hide-scrollbars --screenshot=docs/persona_map.png --window-size=1020,680 docs/persona_map.html
"""

from pathlib import Path

import persona_axes as pa
from persona_axes.viz import plots

HERE = Path(__file__).resolve().parent
VEC = pa.shipped_vectors_dir()  # the repository's vectors/smollm2-135m-instruct, as installed with the package

roles = pa.VectorSet.load(VEC / "roles.safetensors")
default = pa.PersonaVector.load(VEC / "default.safetensors")
space = pa.PersonaSpace(n_components=10).fit(roles, default=default)
fig = plots.persona_map(space, 20, families=roles, colour_by="family", roles=roles, label=3,  # 3 named at each end
                        title="SmolLM2-135M-Instruct: role vectors at layer 20 (star: default Assistant)")
fig.update_layout(width=1000, height=640, margin=dict(l=60, r=20, t=60, b=50))
plots.save_figure(fig, HERE / "persona_map.html")
