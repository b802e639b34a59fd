-- Chained signed heads (issue 15). Each head signed from now on (version 2)
-- carries its place in the chain of heads (seq 1, 2, ...), the signing
-- gateway, why it was signed (start or interval) and the digest of the head
-- before it (prev_digest: SHA-256 of that head's signed message and
-- signature), all inside the signed message; see src/audit/head.rs.
-- Rows written before this migration are version 1 (no seq, not chained).
ALTER TABLE audit_signatures ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE audit_signatures ADD COLUMN seq INTEGER;
ALTER TABLE audit_signatures ADD COLUMN gateway TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_signatures ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_signatures ADD COLUMN prev_digest TEXT NOT NULL DEFAULT '';
-- One head per place: two gateways can never fork the chain of heads.
CREATE UNIQUE INDEX audit_signatures_seq ON audit_signatures (seq);
