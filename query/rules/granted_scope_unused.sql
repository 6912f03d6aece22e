-- id: granted_scope_unused
-- title: Granted scope never used
-- severity: low
-- owasp_nhi: NHI5
-- description: >
--   A token carried scopes that the grants files tie to operations, but it never invoked any of
--   those operations. Privilege held and not needed is blast radius for nothing (OWASP NHI5);
--   request narrower scopes. Scopes no grant mentions are not judged.
WITH known AS (
  -- Only scopes tied to operations: use is judged by the operations a token invoked.
  SELECT DISTINCT subject_id AS scope FROM grants
  WHERE subject_kind = 'scope' AND target_kind = 'operation'),
carried AS (
  -- Each token's judged scopes (a token's scopes are the same on every span that carries it).
  SELECT s.credential_fp, k.scope, max(s.start_time) AS last_seen
  FROM (SELECT credential_fp, start_time, unnest(token_scopes) AS scope FROM spans
        WHERE credential_kind = 'jwt' AND cardinality(token_scopes) > 0) s
  JOIN known k ON k.scope = s.scope
  GROUP BY s.credential_fp, k.scope),
used AS (
  -- The judged scopes whose operations the token invoked.
  SELECT DISTINCT e.src_id AS credential_fp, g.subject_id AS scope
  FROM edges e
  JOIN grants g ON g.subject_kind = 'scope' AND g.target_kind = 'operation'
   AND glob_match(g.target_pattern, e.dst_id)
  WHERE e.relation = 'invoked')
SELECT max(c.last_seen) AS time,
       'credential' AS subject_kind,
       c.credential_fp AS subject_id,
       concat('never used ', array_to_string(array_sort(array_agg(c.scope)), ', ')) AS detail,
       CAST(NULL AS VARCHAR) AS trace_id,
       CAST(NULL AS VARCHAR) AS span_id
FROM carried c
LEFT JOIN used u ON u.credential_fp = c.credential_fp AND u.scope = c.scope
WHERE u.scope IS NULL
GROUP BY c.credential_fp
