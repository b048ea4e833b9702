-- Sample inventory for the demo: a flash-sale stock table with an optimistic-lock
-- version column.
DROP DATABASE IF EXISTS shop_demo;
CREATE DATABASE shop_demo CHARACTER SET utf8mb4;
CREATE TABLE shop_demo.inventory (
  sku      BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  name     VARCHAR(128) NOT NULL,
  stock    INT NOT NULL,
  price    DECIMAL(10,2) NULL,
  version  BIGINT UNSIGNED NOT NULL DEFAULT 1
) ENGINE=InnoDB;
