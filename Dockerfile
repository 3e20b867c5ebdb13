# Ballast on Debian 12, built from Debian's packages only.
FROM debian:12
COPY . /src
WORKDIR /src
RUN scripts/deps build && scripts/build /src/build && cp /src/build/ballast /usr/local/bin/ballast
WORKDIR /data
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/ballast"]
CMD ["--data-dir", "/data/default.etcd", \
     "--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", "http://127.0.0.1:2379", \
     "--listen-peer-urls", "http://0.0.0.0:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380", \
     "--initial-cluster", "default=http://127.0.0.1:2380"]
