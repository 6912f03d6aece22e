-- id: use_after_revocation
-- title: Identity used after its owner revoked it or its approval expired
-- severity: critical
-- owasp_nhi: NHI1
-- description: >
--   A credential, agent or workload acted after the revoked_at or expires_at its owner declared
--   (owners files). Offboarding happened on paper but not in fact (OWASP NHI1): the identity
--   still works.
WITH used AS (
  SELECT 'credential' AS kind, credential_fp AS id, start_time, trace_id, span_id
    FROM spans WHERE credential_fp IS NOT NULL
  UNION ALL
  SELECT 'agent' AS kind, agent_id AS id, start_time, trace_id, span_id
    FROM spans WHERE agent_id IS NOT NULL
  UNION ALL
  SELECT 'workload' AS kind, service_name AS id, start_time, trace_id, span_id
    FROM spans WHERE service_name IS NOT NULL
  UNION ALL
  SELECT 'workload' AS kind, workload_id AS id, start_time, trace_id, span_id
    FROM spans WHERE workload_id IS NOT NULL AND workload_id <> service_name),
ended AS (
  SELECT kind, id, owner,
         CASE WHEN revoked_at IS NOT NULL AND (expires_at IS NULL OR revoked_at <= expires_at)
              THEN revoked_at ELSE expires_at END AS ended_at,
         CASE WHEN revoked_at IS NOT NULL AND (expires_at IS NULL OR revoked_at <= expires_at)
              THEN 'revoked' ELSE 'expired' END AS how
  FROM owners
  WHERE revoked_at IS NOT NULL OR expires_at IS NOT NULL)
SELECT max(u.start_time) AS time,
       u.kind AS subject_kind,
       u.id AS subject_id,
       concat('used in ', count(*), ' span(s) after ', e.owner, ' ', e.how, ' it at ',
              CAST(e.ended_at AS VARCHAR)) AS detail,
       first_value(u.trace_id ORDER BY u.start_time DESC, u.span_id) AS trace_id,
       first_value(u.span_id ORDER BY u.start_time DESC, u.span_id) AS span_id
FROM used u
JOIN ended e ON e.kind = u.kind AND e.id = u.id
WHERE u.start_time >= e.ended_at
GROUP BY u.kind, u.id, e.owner, e.how, e.ended_at
