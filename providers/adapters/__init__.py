"""One adapter per provider wire format; each turns a ProviderRequest into one HTTP exchange and
the answer (or the failure) into provider-neutral terms."""
