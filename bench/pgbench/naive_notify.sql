\set n random(1, 2000000000)
BEGIN;
INSERT INTO bench_orders (customer) VALUES ('c:n');
INSERT INTO naive_notify_outbox (payload) VALUES ('{"users":[{"id":"buyer-:n","name":"Buyer :n","email":["buyer-:n@example.com"],"custom":{"tier":"gold"}},{"id":"seller","name":"Seller","email":["seller@example.com"],"role":"seller"}],"conversation":{"id":"order-:n","subject":"Order :n","custom":{"n":":n"}},"messages":[{"type":"SystemMessage","text":"intent :n placed"},{"sender":"buyer-:n","text":"hello :n"}]}');
COMMIT;
