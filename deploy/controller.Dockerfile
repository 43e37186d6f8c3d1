# The controller image: the `bilevel` service and CLI, no sandbox payload. Its build
# context is staged by `python deploy/prepare.py` (a wheelhouse of the dependencies and
# the source packages), so the build needs no network; BASE is any Debian-like image
# with Python 3.11 and venv (python:3.11-slim-bookworm, or CI's local debootstrap base).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS packages
COPY wheelhouse /tmp/wheelhouse
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse \
        -r /tmp/wheelhouse/requirements.txt

FROM ${BASE}
COPY --from=packages /opt/venv /opt/venv
COPY src /opt/bilevel-controller
# Source on the path (no install step, no setuptools in the image); `bilevel` on PATH.
# A fixed non-root user; the state volume's mount point is its own.
RUN echo /opt/bilevel-controller > "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bilevel-controller.pth" \
 && printf '#!/opt/venv/bin/python3\nimport sys\nfrom controller.cli import main\nsys.exit(main())\n' \
        > /opt/venv/bin/bilevel \
 && chmod 755 /opt/venv/bin/bilevel \
 && echo 'bilevel:x:10002:10002:bilevel controller:/var/lib/bilevel:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'bilevel:x:10002:' >> /etc/group \
 && mkdir -p /var/lib/bilevel /etc/bilevel \
 && chown 10002:10002 /var/lib/bilevel && chmod 700 /var/lib/bilevel \
 && chmod -R a-w /opt/bilevel-controller \
 && /opt/venv/bin/bilevel --help >/dev/null
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/bilevel \
    BILEVEL_CACHE=/var/lib/bilevel/cache \
    BILEVEL_CONFIG=/etc/bilevel/bilevel.toml
USER 10002:10002
WORKDIR /var/lib/bilevel
EXPOSE 50051
ENTRYPOINT ["bilevel"]
CMD ["--log-format", "json", "serve"]
