-- id: granted_scope_unused
-- title: Granted scope never used
-- severity: low
-- owasp_nhi: NHI5
-- description: >
--   A token carried scopes that the grants files tie to operations, but it never invoked any of
--   those operations. Privilege held and not needed is blast radius for nothing (OWASP NHI5);
--   request narrower scopes. Scopes no grant mentions are not judged.
WITH carried AS (
  SELECT credential_fp, last_seen, unnest(scopes_granted) AS scope, scopes_used AS used
  FROM credential_usage),
known AS (
  -- Only scopes tied to operations: use is judged by the operations a token invoked.
  SELECT DISTINCT subject_id AS scope FROM grants
  WHERE subject_kind = 'scope' AND target_kind = 'operation')
SELECT max(c.last_seen) AS time,
       'credential' AS subject_kind,
       c.credential_fp AS subject_id,
       concat('never used ', array_to_string(array_sort(array_agg(c.scope)), ', ')) AS detail,
       CAST(NULL AS VARCHAR) AS trace_id,
       CAST(NULL AS VARCHAR) AS span_id
FROM carried c
JOIN known k ON k.scope = c.scope
WHERE NOT coalesce(array_has(c.used, c.scope), false)
GROUP BY c.credential_fp
