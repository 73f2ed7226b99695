"""The WhatsApp channel on neonize (whatsmeow): one runtime process owns an account at a time.

Modules, one concern each (the shape of mautrix-whatsapp's ``pkg/connector``):

- :mod:`.transport`  the interface the runtime talks to, and its event and error types;
- :mod:`.neonize_transport`  the real adapter over neonize's client;
- :mod:`.fake_transport`  a file-driven fake (tests, failover rehearsals; never production);
- :mod:`.identity`  one identity per person (phone JID ↔ LID) and where replies go;
- :mod:`.inbound`  a transport message ▸ :class:`~zenthor.ingress.InboundMessage` ▸ ``accept()``;
- :mod:`.delivery`  the owner's outbox loop: lease-fenced claims, rate limits, send, mark sent;
- :mod:`.presence`  read marks and "typing…" while a turn of the account runs;
- :mod:`.runtime`  the account lease, standby/takeover, the connection's lifecycle;
- :mod:`.auth_store`  where the session lives (SQLite file or whatsmeow's Postgres store);
- :mod:`.pairing`  QR or pair-code pairing under the account lease.
"""

CHANNEL = "whatsapp"
