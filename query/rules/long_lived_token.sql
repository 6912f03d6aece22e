-- id: long_lived_token
-- title: Token valid for more than 24 hours
-- severity: medium
-- owasp_nhi: NHI7
-- description: >
--   A token's lifetime (exp - iat) exceeds 24 hours. A stolen long-lived token stays useful long
--   after the theft (OWASP NHI7); prefer short-lived tokens refreshed from a bound credential.
SELECT max(start_time) AS time,
       'credential' AS subject_kind,
       credential_fp AS subject_id,
       concat(min(credential_kind), ' for ', coalesce(min(token_sub), '?'), ' from ',
              coalesce(min(token_iss), '?'), ' is valid for ',
              round((CAST(max(token_expires_at) AS BIGINT) - CAST(min(token_issued_at) AS BIGINT))
                    / 3.6e12, 1), ' h') AS detail,
       first_value(trace_id ORDER BY start_time DESC, span_id) AS trace_id,
       first_value(span_id ORDER BY start_time DESC, span_id) AS span_id
FROM spans
-- Rows are filtered before grouping (a token's lifetime is on every span that carries it), so
-- only long-lived tokens are grouped, not the millions of short per-request ones.
WHERE credential_fp IS NOT NULL
  AND CAST(token_expires_at AS BIGINT) - CAST(token_issued_at AS BIGINT) > 86400 * 1000000000
GROUP BY credential_fp
