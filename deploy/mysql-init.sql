-- The sample schema and the invsync user (docker-compose.yml runs it once).
CREATE TABLE IF NOT EXISTS shop.inventory (
  sku BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  name VARCHAR(128) NOT NULL,
  stock INT NOT NULL,
  price DECIMAL(10,2) NULL,
  version BIGINT UNSIGNED NOT NULL DEFAULT 1
) ENGINE=InnoDB;
INSERT INTO shop.inventory (sku, name, stock, price) VALUES (1, 'sample item', 100, 9.90), (2, 'another item', 5, 19.90);
CREATE USER IF NOT EXISTS 'invsync'@'%' IDENTIFIED BY 'invsync-secret';
GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'invsync'@'%';
GRANT ALL PRIVILEGES ON `invsync`.* TO 'invsync'@'%';
